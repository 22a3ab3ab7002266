/** The preferences of an RFC 7240 `Prefer` header that offload acts on. */
export interface Preferences {
  respondAsync: boolean;
  /** Seconds, when a valid `wait=N` was sent. */
  wait: number | null;
}

const NONE: Preferences = { respondAsync: false, wait: null };

/** Unknown or malformed preferences are ignored, as RFC 7240 asks. */
export function parsePrefer(header: string | string[] | undefined): Preferences {
  if (header === undefined) return NONE;
  const text = Array.isArray(header) ? header.join(',') : header;
  let respondAsync = false;
  let wait: number | null = null;
  for (const part of text.split(',')) {
    const pref = part.split(';', 1)[0]!.trim();
    const eq = pref.indexOf('=');
    const name = (eq === -1 ? pref : pref.slice(0, eq)).trim().toLowerCase();
    let value = eq === -1 ? '' : pref.slice(eq + 1).trim();
    if (value.startsWith('"') && value.endsWith('"') && value.length >= 2) value = value.slice(1, -1);
    if (name === 'respond-async') respondAsync = true;
    else if (name === 'wait' && /^\d{1,9}$/.test(value)) wait = Number(value);
  }
  return { respondAsync, wait };
}
