// The dashboard's browser script, served by lib/http/dashboard.ts at `<mount>/assets/dashboard.js`
// and loaded by the page as a module script. An ES module with no imports, so tsc emits it for the
// browser as it is (an .mts file: a .ts one would get CommonJS's `exports`), and its names stay
// private to it. Job data reaches the page through `textContent` only, never as markup: payloads
// are anyone's text.
type Status = 'queued' | 'running' | 'succeeded' | 'failed' | 'canceled';

interface Progress {
  percent: number;
  message?: string;
  data?: unknown;
}

interface JobError {
  message: string;
  code?: string;
  stack?: string;
}

interface JobSummary {
  id: string;
  task: string;
  owner: string | null;
  status: Status;
  progress: Progress | null;
  attempts: number;
  maxAttempts: number;
  cancelRequested: boolean;
  createdAt: string;
  runAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  error?: JobError;
  /** The job's event counter: lower is older news. */
  seq: number;
}

interface JobDetail extends JobSummary {
  payload: unknown;
  result: unknown;
  logs: string[];
  expireAt: string | null;
  timeoutMs: number | null;
  idempotencyKey: string | null;
}

interface ProgressEvent {
  id: string;
  seq: number;
  at: string;
  progress: Progress;
}

interface StatusEvent {
  id: string;
  seq: number;
  at: string;
  status: Status;
  attempts: number;
  error?: JobError;
}

interface Row {
  job: JobSummary;
  tr: HTMLTableRowElement;
  cells: Record<Column, HTMLTableCellElement>;
  bar: HTMLElement;
  fill: HTMLElement;
  pct: HTMLElement;
  msg: HTMLElement;
  badge: HTMLElement;
}

type Column = 'id' | 'task' | 'owner' | 'status' | 'progress' | 'attempts' | 'created' | 'duration';
const COLUMNS: Column[] = ['id', 'task', 'owner', 'status', 'progress', 'attempts', 'created', 'duration'];
const STATUSES: Status[] = ['queued', 'running', 'succeeded', 'failed', 'canceled'];
const FINISHED = new Set<Status>(['succeeded', 'failed', 'canceled']);
const PAGE_SIZE = 50;
/** The most jobs `/api/jobs` lists at once. */
const MAX_LIMIT = 200;

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`dashboard: #${id} is missing from the page`);
  return el as T;
};

const api = `${document.body.dataset.base ?? ''}/api`;
const tbody = $<HTMLTableSectionElement>('job-rows');
const panel = $('detail');
const rows = new Map<string, Row>();
const filters = { status: '', task: '', owner: '' };
let nextCursor: string | null = null;
let listGeneration = 0;
/** How many rows were asked for: page one, plus each Load more. */
let wanted = PAGE_SIZE;
/** The list's loads, one after another. */
let listQueue: Promise<void> = Promise.resolve();
/** Server clock minus ours (from the `Date` header), so durations do not depend on this machine's clock. */
let skew = 0;
let openId: string | null = null;
let detail: JobDetail | null = null;
/** The row to focus again when the detail closes. */
let returnFocusTo: string | null = null;
/** Jobs read because an event named them, and whether another event came meanwhile. */
const fetching = new Map<string, boolean>();

// -------------------------------------------------------------------------------------------
// Requests

class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

async function request<T>(path: string, method = 'GET'): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json' };
  // The server refuses actions without it: a cross-site form cannot set a custom header.
  if (method !== 'GET') headers['x-offload-dashboard'] = '1';
  const res = await fetch(api + path, { method, headers, credentials: 'same-origin', cache: 'no-store' });
  const date = res.headers.get('date');
  if (date) {
    // `Date` has whole seconds: +500 ms centres the error; small changes are not worth a jitter.
    const next = Date.parse(date) + 500 - Date.now();
    if (Number.isFinite(next) && Math.abs(next - skew) > 1500) skew = next;
  }
  const text = await res.text();
  let body: any = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!res.ok) {
    const detailText = body && typeof body.detail === 'string' ? body.detail : `HTTP ${res.status}`;
    throw new ApiError(detailText, res.status);
  }
  return body as T;
}

function showError(err: unknown): void {
  const box = $('error');
  box.textContent = err instanceof Error ? err.message : String(err);
  box.hidden = false;
}

function clearError(): void {
  const box = $('error');
  box.hidden = true;
  box.textContent = '';
}

// -------------------------------------------------------------------------------------------
// Formatting

const now = () => Date.now() + skew;
const ms = (iso: string | null) => (iso === null ? null : Date.parse(iso));
const pad = (n: number) => String(n).padStart(2, '0');

function duration(msValue: number): string {
  const v = Math.max(0, msValue);
  if (v < 1000) return `${Math.round(v)}ms`;
  const s = v / 1000;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)}s`;
  const total = Math.round(s);
  const d = Math.floor(total / 86_400);
  const h = Math.floor(total / 3600) % 24;
  const m = Math.floor(total / 60) % 60;
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${pad(m)}m`;
  return `${m}m ${pad(total % 60)}s`;
}

/** Local time: `14:03:07` today, `05-01 14:03` before. Fixed width either way. */
function shortTime(iso: string): string {
  const t = new Date(iso);
  const today = new Date(now());
  const hm = `${pad(t.getHours())}:${pad(t.getMinutes())}`;
  if (t.toDateString() === today.toDateString()) return `${hm}:${pad(t.getSeconds())}`;
  return `${pad(t.getMonth() + 1)}-${pad(t.getDate())} ${hm}`;
}

function longTime(iso: string | null): string {
  if (iso === null) return '—';
  const t = new Date(iso);
  return `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())} ${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}`;
}

/** How long it ran (or has been running); for a queued job due later, when it runs. */
function durationText(job: JobSummary): string {
  const started = ms(job.startedAt);
  const finished = ms(job.finishedAt);
  if (job.status === 'running' && started !== null) return duration(now() - started);
  if (FINISHED.has(job.status) && started !== null && finished !== null) return duration(finished - started);
  if (job.status === 'queued') {
    const runAt = ms(job.runAt)!;
    if (runAt > now() + 500) return `in ${duration(runAt - now())}`;
  }
  return '—';
}

function percentOf(job: JobSummary): number | null {
  if (job.status === 'succeeded') return 100;
  if (!job.progress) return null;
  return Math.min(100, Math.max(0, job.progress.percent));
}

function statusText(job: JobSummary): string {
  return job.cancelRequested && job.status === 'running' ? 'canceling' : job.status;
}

const shortId = (id: string) => id.slice(0, 8);

function json(value: unknown): string {
  return value === undefined ? '—' : JSON.stringify(value, null, 2);
}

// -------------------------------------------------------------------------------------------
// Rows

function setText(el: HTMLElement, text: string): void {
  if (el.textContent !== text) el.textContent = text;
}

function setProgress(bar: HTMLElement, fill: HTMLElement, pct: HTMLElement, percent: number | null): void {
  const value = percent === null ? 0 : Math.round(percent);
  bar.setAttribute('aria-valuenow', String(value));
  if (percent === null) bar.setAttribute('aria-valuetext', 'not started');
  else bar.removeAttribute('aria-valuetext');
  // A transform, not a width: no layout work however often progress arrives.
  fill.style.transform = `scaleX(${(percent ?? 0) / 100})`;
  setText(pct, percent === null ? '—' : `${value}%`);
}

function createRow(job: JobSummary): Row {
  const tr = document.createElement('tr');
  tr.className = 'job';
  tr.dataset.jobId = job.id;
  tr.tabIndex = -1;
  const cells = {} as Record<Column, HTMLTableCellElement>;
  for (const column of COLUMNS) {
    const td = document.createElement('td');
    td.dataset.col = column;
    cells[column] = td;
    tr.append(td);
  }
  const code = document.createElement('code');
  code.textContent = shortId(job.id);
  cells.id.append(code);
  cells.id.title = job.id;

  const badge = document.createElement('span');
  badge.className = 'badge';
  cells.status.append(badge);

  const bar = document.createElement('div');
  bar.className = 'progress';
  bar.setAttribute('role', 'progressbar');
  bar.setAttribute('aria-valuemin', '0');
  bar.setAttribute('aria-valuemax', '100');
  bar.setAttribute('aria-label', `Progress of job ${shortId(job.id)}`);
  const fill = document.createElement('div');
  fill.className = 'fill';
  bar.append(fill);
  const pct = document.createElement('span');
  pct.className = 'pct';
  const msg = document.createElement('span');
  msg.className = 'msg';
  // A flex box inside the cell, not a flex cell: the row keeps its table layout and borders.
  const line = document.createElement('div');
  line.className = 'progress-line';
  line.append(bar, pct, msg);
  cells.progress.append(line);

  const row: Row = { job, tr, cells, bar, fill, pct, msg, badge };
  renderRow(row);
  return row;
}

function renderRow(row: Row): void {
  const { job, cells } = row;
  row.tr.dataset.status = job.status;
  row.badge.dataset.status = job.status;
  setText(row.badge, statusText(job));
  setText(cells.task, job.task);
  cells.task.title = job.task;
  setText(cells.owner, job.owner ?? '—');
  cells.owner.title = job.owner ?? 'anonymous';
  setProgress(row.bar, row.fill, row.pct, percentOf(job));
  const message = job.status === 'failed' && job.error ? job.error.message : (job.progress?.message ?? '');
  setText(row.msg, message);
  row.msg.title = message;
  setText(cells.attempts, `${job.attempts}/${job.maxAttempts}`);
  setText(cells.created, shortTime(job.createdAt));
  cells.created.title = longTime(job.createdAt);
  setText(cells.duration, durationText(job));
  row.tr.setAttribute('aria-current', openId === job.id ? 'true' : 'false');
}

function matchesFilters(job: JobSummary): boolean {
  return (
    (!filters.status || job.status === filters.status) &&
    (!filters.task || job.task === filters.task) &&
    (!filters.owner || job.owner === filters.owner)
  );
}

/** Newest first, as the server lists: createdAt, then id, descending. */
function before(a: JobSummary, b: JobSummary): boolean {
  const ta = Date.parse(a.createdAt);
  const tb = Date.parse(b.createdAt);
  return ta > tb || (ta === tb && a.id > b.id);
}

/** Show the rows of a page: update rows already there, add new ones, drop (on a reload) the rest. */
function applyPage(jobs: JobSummary[], append: boolean): void {
  if (!append) {
    const keep = new Set(jobs.map((j) => j.id));
    for (const [id, row] of rows) {
      if (keep.has(id)) continue;
      row.tr.remove();
      rows.delete(id);
    }
  }
  let previous: Element | null = append ? tbody.lastElementChild : null;
  for (const job of jobs) {
    let row = rows.get(job.id);
    if (row) {
      // An event may have told us more than this page, read before it.
      if (job.seq >= row.job.seq) row.job = job;
      renderRow(row);
    } else {
      row = createRow(job);
      rows.set(job.id, row);
    }
    const wanted = previous ? previous.nextElementSibling : tbody.firstElementChild;
    if (wanted !== row.tr) tbody.insertBefore(row.tr, wanted);
    previous = row.tr;
  }
  afterRowsChanged();
}

function afterRowsChanged(): void {
  $('empty').hidden = rows.size > 0;
  $('more').hidden = nextCursor === null;
  // Roving focus: the table is one Tab stop; the arrows move within it.
  const rowsInOrder = tbody.querySelectorAll<HTMLTableRowElement>('tr.job');
  if (rowsInOrder.length > 0 && !tbody.querySelector('tr.job[tabindex="0"]')) rowsInOrder[0]!.tabIndex = 0;
}

/** A job the list did not hold: add it where it belongs, if it matches and falls in the loaded range. */
function insertJob(job: JobSummary): void {
  if (rows.has(job.id) || !matchesFilters(job)) return;
  const all = [...rows.values()];
  const oldest = all.length ? all.reduce((a, b) => (before(a.job, b.job) ? b : a)) : null;
  // Older than everything loaded while more pages exist: it shows up when that page loads.
  if (oldest && nextCursor !== null && before(oldest.job, job)) return;
  const row = createRow(job);
  rows.set(job.id, row);
  let next: HTMLTableRowElement | null = null;
  for (const tr of tbody.querySelectorAll<HTMLTableRowElement>('tr.job')) {
    const other = rows.get(tr.dataset.jobId!);
    if (other && before(job, other.job)) {
      next = tr;
      break;
    }
  }
  tbody.insertBefore(row.tr, next);
  afterRowsChanged();
}

// -------------------------------------------------------------------------------------------
// Loading

function queryString(cursor: string | null, limit: number): string {
  const q = new URLSearchParams();
  if (filters.status) q.set('status', filters.status);
  if (filters.task) q.set('task', filters.task);
  if (filters.owner) q.set('owner', filters.owner);
  q.set('limit', String(limit));
  if (cursor) q.set('cursor', cursor);
  return q.toString();
}

type ListPage = { jobs: JobSummary[]; nextCursor: string | null };

/** The oldest row the list shows, by the server's order. */
function oldestRow(): JobSummary | null {
  let oldest: JobSummary | null = null;
  for (const row of rows.values()) if (!oldest || before(oldest, row.job)) oldest = row.job;
  return oldest;
}

/**
 * Read the list: `first` page one (on load, and when the filters change), `more` the next page
 * (Load more), `reload` again what the list shows (after a reconnect, or a burst of new jobs):
 * page after page until past the oldest row shown, so rows from Load more stay. New jobs come
 * on top; at most `MAX_LIMIT` rows beyond those asked for stay, so the list cannot grow forever.
 * Loads run one after another, so a reload sees the rows a Load more just added.
 */
function loadList(mode: 'first' | 'reload' | 'more'): Promise<void> {
  const generation = mode === 'more' ? listGeneration : ++listGeneration;
  listQueue = listQueue.then(() => readList(mode, generation));
  return listQueue;
}

async function readList(mode: 'first' | 'reload' | 'more', generation: number): Promise<void> {
  // A newer load (filters changed meanwhile) wins.
  if (generation !== listGeneration) return;
  const busy = $('jobs');
  busy.setAttribute('aria-busy', 'true');
  try {
    if (mode === 'more') {
      if (nextCursor === null) return;
      const page = await request<ListPage>(`/jobs?${queryString(nextCursor, PAGE_SIZE)}`);
      if (generation !== listGeneration) return;
      nextCursor = page.nextCursor;
      wanted += page.jobs.length;
      applyPage(page.jobs, true);
    } else {
      if (mode === 'first') wanted = PAGE_SIZE;
      const oldest = mode === 'reload' ? oldestRow() : null;
      const jobs: JobSummary[] = [];
      let cursor: string | null = null;
      do {
        const limit =
          mode === 'first' ? PAGE_SIZE : Math.min(MAX_LIMIT, Math.max(PAGE_SIZE, rows.size - jobs.length));
        const page: ListPage = await request<ListPage>(`/jobs?${queryString(cursor, limit)}`);
        if (generation !== listGeneration) return;
        jobs.push(...page.jobs);
        cursor = page.nextCursor;
        // Until the pages reach the oldest row shown (many new jobs push it further down).
      } while (
        cursor !== null &&
        oldest !== null &&
        jobs.length > 0 &&
        before(jobs.at(-1)!, oldest) &&
        jobs.length < wanted + MAX_LIMIT
      );
      nextCursor = cursor;
      applyPage(jobs, false);
    }
    clearError();
  } catch (err) {
    showError(err);
  } finally {
    if (generation === listGeneration) busy.setAttribute('aria-busy', 'false');
  }
}

/** `/api/counts` scans every job on some brokers (PostgreSQL): read at most once per this. */
const COUNTS_EVERY_MS = 2000;
let countsTimer: number | null = null;
let countsReadAt = Number.NEGATIVE_INFINITY;
/** Read the counts soon: at once after a quiet spell, else once `COUNTS_EVERY_MS` has passed. */
function scheduleCounts(): void {
  if (countsTimer !== null) return;
  const wait = Math.max(0, countsReadAt + COUNTS_EVERY_MS - Date.now());
  countsTimer = window.setTimeout(() => {
    countsTimer = null;
    countsReadAt = Date.now();
    void loadCounts();
  }, wait);
}

async function loadCounts(): Promise<void> {
  try {
    const counts = await request<Record<Status, number>>('/counts');
    let total = 0;
    for (const status of STATUSES) {
      const n = counts[status] ?? 0;
      total += n;
      setText($(`count-${status}`), String(n));
    }
    setText($('count-total'), String(total));
  } catch (err) {
    showError(err);
  }
}

let reloadTimer: number | null = null;
function scheduleReload(): void {
  if (reloadTimer !== null) return;
  reloadTimer = window.setTimeout(() => {
    reloadTimer = null;
    void loadList('reload');
  }, 1000);
}

/** A job an event named that the list does not hold: read it, and show it if it belongs. */
async function fetchAndInsert(id: string): Promise<void> {
  if (fetching.has(id)) {
    fetching.set(id, true);
    return;
  }
  // Many new jobs at once: one reload a second costs less than a read per job.
  if (fetching.size >= 4) return scheduleReload();
  fetching.set(id, false);
  try {
    let job: JobDetail;
    do {
      fetching.set(id, false);
      job = await request<JobDetail>(`/jobs/${id}`);
      // Read again if an event came while this read was on its way: it may predate it.
    } while (fetching.get(id));
    insertJob(job);
  } catch {
    // Purged meanwhile, or a hiccup: the next reload shows it if it is there.
  } finally {
    fetching.delete(id);
  }
}

// -------------------------------------------------------------------------------------------
// Live events

function onStatus(event: StatusEvent): void {
  const row = rows.get(event.id);
  if (row && event.seq > row.job.seq) {
    const job = row.job;
    job.seq = event.seq;
    const at = event.at;
    if (event.status === 'running' && job.status !== 'running') {
      job.startedAt = at;
      job.finishedAt = null;
    }
    if (event.status === 'queued') {
      job.finishedAt = null;
      // A retry from the dashboard or the CLI starts over.
      if (event.attempts === 0) {
        job.progress = null;
        job.startedAt = null;
      }
    }
    if (FINISHED.has(event.status)) job.finishedAt = at;
    if (event.status !== 'running') job.cancelRequested = false;
    job.status = event.status;
    job.attempts = event.attempts;
    if (event.error) job.error = event.error;
    else if (event.status === 'succeeded' || (event.status === 'queued' && event.attempts === 0)) {
      delete job.error;
    }
    renderRow(row);
  } else if (!row && (filters.status ? event.status === filters.status : event.status === 'queued')) {
    // A new job (or one that now matches the status filter). Other jobs outside the list, older
    // than it or filtered out, change all the time: they are not read one by one.
    void fetchAndInsert(event.id);
  }
  if (openId === event.id) scheduleDetail(0);
  scheduleCounts();
}

function onProgress(event: ProgressEvent): void {
  const row = rows.get(event.id);
  if (row && event.seq > row.job.seq) {
    row.job.seq = event.seq;
    row.job.progress = event.progress;
    renderRow(row);
  }
  if (openId === event.id && detail) {
    detail.progress = event.progress;
    renderDetailProgress(detail);
    // Logs are not in events: read the job again now and then while it reports progress.
    scheduleDetail(1000);
  }
}

function setLive(state: 'connecting' | 'live' | 'offline'): void {
  const el = $('live');
  el.dataset.state = state;
  setText(el, state === 'live' ? 'Live' : state === 'connecting' ? 'Connecting…' : 'Offline, retrying…');
}

function connect(): void {
  setLive('connecting');
  const source = new EventSource(`${api}/events`);
  source.addEventListener('ready', () => {
    setLive('live');
    // Whatever happened while (re)connecting: read the list and counts again.
    void loadList('reload');
    scheduleCounts();
    if (openId) scheduleDetail(0);
  });
  source.addEventListener('status', (e) => onStatus(JSON.parse((e as MessageEvent).data)));
  source.addEventListener('progress', (e) => onProgress(JSON.parse((e as MessageEvent).data)));
  source.addEventListener('error', () => {
    if (source.readyState === EventSource.CLOSED) {
      // An error answer (a 401 once the session expired, a 503): EventSource gives up; we do not.
      setLive('offline');
      window.setTimeout(connect, 5000);
    } else {
      setLive('connecting');
    }
  });
}

// -------------------------------------------------------------------------------------------
// Detail

let detailTimer: number | null = null;
let detailDue = 0;
function scheduleDetail(delay: number): void {
  const due = Date.now() + delay;
  if (detailTimer !== null && detailDue <= due) return;
  if (detailTimer !== null) window.clearTimeout(detailTimer);
  detailDue = due;
  detailTimer = window.setTimeout(() => {
    detailTimer = null;
    if (openId) void loadDetail(openId);
  }, delay);
}

async function loadDetail(id: string): Promise<void> {
  try {
    const job = await request<JobDetail>(`/jobs/${id}`);
    if (openId !== id) return;
    detail = job;
    renderDetail(job);
    const row = rows.get(id);
    if (row && job.seq >= row.job.seq) {
      row.job = job;
      renderRow(row);
    } else if (row) {
      // Events got ahead of this read: read again.
      scheduleDetail(200);
    }
  } catch (err) {
    if (openId !== id) return;
    setText(
      $('detail-message'),
      err instanceof ApiError && err.status === 404
        ? 'No such job (purged?).'
        : String((err as Error).message),
    );
  }
}

function field(name: string, label: string, value: string): HTMLElement {
  const wrap = document.createElement('div');
  wrap.dataset.field = name;
  const dt = document.createElement('dt');
  dt.textContent = label;
  const dd = document.createElement('dd');
  dd.textContent = value;
  wrap.append(dt, dd);
  return wrap;
}

function renderDetailProgress(job: JobDetail): void {
  const percent = percentOf(job);
  setProgress($('detail-progress'), $('detail-progress-fill'), $('detail-progress-pct'), percent);
  setText($('detail-progress-message'), job.progress?.message ?? '');
}

function renderDetail(job: JobDetail): void {
  setText($('detail-id'), job.id);
  const badge = $('detail-status');
  badge.dataset.status = job.status;
  panel.dataset.status = job.status;
  setText(badge, statusText(job));
  const started = ms(job.startedAt);
  const created = ms(job.createdAt)!;
  const fields = [
    field('task', 'Task', job.task),
    field('owner', 'Owner', job.owner ?? '— (anonymous)'),
    field('attempts', 'Attempts', `${job.attempts} of ${job.maxAttempts}`),
    field('created', 'Created', longTime(job.createdAt)),
  ];
  if (job.status === 'queued' && job.runAt !== job.createdAt)
    fields.push(field('run-at', 'Runs at', longTime(job.runAt)));
  fields.push(
    field(
      'started',
      'Started',
      started === null ? '—' : `${longTime(job.startedAt)} (waited ${duration(started - created)})`,
    ),
    field('finished', 'Finished', longTime(job.finishedAt)),
    field('duration', 'Duration', durationText(job)),
  );
  if (job.timeoutMs !== null) fields.push(field('timeout', 'Time limit', duration(job.timeoutMs)));
  if (job.expireAt !== null)
    fields.push(field('expires', 'Expires if not started by', longTime(job.expireAt)));
  if (job.idempotencyKey) fields.push(field('idempotency-key', 'Idempotency key', job.idempotencyKey));
  $('detail-fields').replaceChildren(...fields);

  renderDetailProgress(job);
  setText($('detail-payload'), json(job.payload));

  const outcome = $('detail-outcome');
  if (job.status === 'succeeded') {
    outcome.hidden = false;
    setText($('detail-outcome-title'), 'Result');
    setText($('detail-outcome-body'), json(job.result));
  } else if (job.error) {
    outcome.hidden = false;
    setText($('detail-outcome-title'), job.status === 'failed' ? 'Error' : 'Last error');
    const head = job.error.code ? `${job.error.code}: ${job.error.message}` : job.error.message;
    setText($('detail-outcome-body'), job.error.stack ? `${head}\n${job.error.stack}` : head);
  } else {
    outcome.hidden = true;
  }

  setText($('detail-logs-count'), String(job.logs.length));
  const logs = $('detail-logs');
  const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
  setText(logs, job.logs.length ? job.logs.join('\n') : '(none)');
  if (atBottom) logs.scrollTop = logs.scrollHeight;

  const cancel = $<HTMLButtonElement>('detail-cancel');
  const retry = $<HTMLButtonElement>('detail-retry');
  cancel.disabled = !(job.status === 'queued' || (job.status === 'running' && !job.cancelRequested));
  retry.disabled = !(job.status === 'failed' || job.status === 'canceled');
}

function openDetail(id: string): void {
  const wasOpen = openId;
  openId = id;
  detail = null;
  for (const row of rows.values()) renderRow(row);
  if (wasOpen !== id) {
    setText($('detail-message'), '');
    setText($('detail-id'), id);
    $('detail-fields').replaceChildren();
    setText($('detail-payload'), '…');
    setText($('detail-logs'), '…');
    $('detail-outcome').hidden = true;
  }
  panel.hidden = false;
  document.body.classList.add('detail-open');
  history.replaceState(null, '', `${location.pathname}${location.search}#job=${id}`);
  $('detail-close').focus();
  void loadDetail(id);
}

function closeDetail(): void {
  if (!openId) return;
  openId = null;
  detail = null;
  panel.hidden = true;
  document.body.classList.remove('detail-open');
  history.replaceState(null, '', `${location.pathname}${location.search}`);
  for (const row of rows.values()) renderRow(row);
  const back = returnFocusTo ? rows.get(returnFocusTo) : null;
  if (back) focusRow(back.tr);
  else ($('jobs').querySelector<HTMLElement>('tr.job[tabindex="0"]') ?? $('filter-status')).focus();
}

async function act(action: 'cancel' | 'retry'): Promise<void> {
  const id = openId;
  if (!id) return;
  const button = $<HTMLButtonElement>(`detail-${action}`);
  button.disabled = true;
  try {
    const answer = await request<{ outcome: string; job: JobDetail }>(`/jobs/${id}/${action}`, 'POST');
    const text: Record<string, string> = {
      canceled: 'Canceled.',
      requested: 'Cancel requested: the job stops when its handler does.',
      retried: 'Queued again.',
    };
    setText($('detail-message'), text[answer.outcome] ?? answer.outcome);
    if (openId === id) {
      detail = answer.job;
      renderDetail(answer.job);
    }
    const row = rows.get(id);
    if (row && answer.job.seq >= row.job.seq) {
      row.job = answer.job;
      renderRow(row);
    }
    scheduleCounts();
  } catch (err) {
    setText($('detail-message'), (err as Error).message);
    if (openId === id) void loadDetail(id);
  }
  // The pressed button is now disabled: keep keyboard focus in the panel.
  if (document.activeElement === button || document.activeElement === document.body) panel.focus();
}

// -------------------------------------------------------------------------------------------
// Filters and keyboard

function readFiltersFromUrl(): void {
  const q = new URLSearchParams(location.search);
  const status = q.get('status') ?? '';
  filters.status = (STATUSES as string[]).includes(status) ? status : '';
  filters.task = q.get('task') ?? '';
  filters.owner = q.get('owner') ?? '';
}

function showFilters(): void {
  $<HTMLSelectElement>('filter-status').value = filters.status;
  $<HTMLInputElement>('filter-task').value = filters.task;
  $<HTMLInputElement>('filter-owner').value = filters.owner;
  for (const button of document.querySelectorAll<HTMLButtonElement>('#counts button[data-status]')) {
    button.setAttribute('aria-pressed', button.dataset.status === filters.status ? 'true' : 'false');
  }
}

function applyFilters(): void {
  filters.status = $<HTMLSelectElement>('filter-status').value;
  filters.task = $<HTMLInputElement>('filter-task').value.trim();
  filters.owner = $<HTMLInputElement>('filter-owner').value.trim();
  showFilters();
  const q = new URLSearchParams();
  if (filters.status) q.set('status', filters.status);
  if (filters.task) q.set('task', filters.task);
  if (filters.owner) q.set('owner', filters.owner);
  const search = q.toString();
  history.replaceState(null, '', `${location.pathname}${search ? `?${search}` : ''}${location.hash}`);
  nextCursor = null;
  void loadList('first');
}

function focusRow(tr: HTMLTableRowElement): void {
  for (const other of tbody.querySelectorAll<HTMLTableRowElement>('tr.job[tabindex="0"]'))
    other.tabIndex = -1;
  tr.tabIndex = 0;
  tr.focus();
}

function rowOf(target: EventTarget | null): HTMLTableRowElement | null {
  return target instanceof Element ? target.closest<HTMLTableRowElement>('tr.job') : null;
}

function openRow(tr: HTMLTableRowElement): void {
  returnFocusTo = tr.dataset.jobId!;
  openDetail(tr.dataset.jobId!);
}

function wire(): void {
  $('filters').addEventListener('submit', (e) => {
    e.preventDefault();
    applyFilters();
  });
  $('filters').addEventListener('reset', () => {
    // After the browser has cleared the fields.
    window.setTimeout(applyFilters, 0);
  });
  $('filter-status').addEventListener('change', applyFilters);
  let typing: number | null = null;
  for (const id of ['filter-task', 'filter-owner']) {
    $(id).addEventListener('input', () => {
      if (typing !== null) window.clearTimeout(typing);
      typing = window.setTimeout(applyFilters, 400);
    });
  }
  for (const button of document.querySelectorAll<HTMLButtonElement>('#counts button[data-status]')) {
    button.addEventListener('click', () => {
      $<HTMLSelectElement>('filter-status').value = button.dataset.status ?? '';
      applyFilters();
    });
  }
  $('more').addEventListener('click', () => void loadList('more'));

  tbody.addEventListener('click', (e) => {
    const tr = rowOf(e.target);
    if (!tr) return;
    focusRow(tr);
    openRow(tr);
  });
  tbody.addEventListener('focusin', (e) => {
    const tr = rowOf(e.target);
    if (tr && tr.tabIndex !== 0) focusRow(tr);
  });
  tbody.addEventListener('keydown', (e) => {
    const tr = rowOf(e.target);
    if (!tr) return;
    const all = [...tbody.querySelectorAll<HTMLTableRowElement>('tr.job')];
    const i = all.indexOf(tr);
    let to: HTMLTableRowElement | undefined;
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      openRow(tr);
      return;
    }
    if (e.key === 'ArrowDown') to = all[i + 1];
    else if (e.key === 'ArrowUp') to = all[i - 1];
    else if (e.key === 'Home') to = all[0];
    else if (e.key === 'End') to = all[all.length - 1];
    else return;
    e.preventDefault();
    if (to) focusRow(to);
  });

  $('detail-close').addEventListener('click', closeDetail);
  $('detail-cancel').addEventListener('click', () => void act('cancel'));
  $('detail-retry').addEventListener('click', () => void act('retry'));
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && openId) {
      e.preventDefault();
      closeDetail();
    }
  });

  // Durations of running jobs tick; nothing else changes size, so nothing moves.
  window.setInterval(() => {
    for (const row of rows.values()) {
      if (row.job.status === 'running' || row.job.status === 'queued')
        setText(row.cells.duration, durationText(row.job));
    }
    if (detail && (detail.status === 'running' || detail.status === 'queued')) {
      const dd = document.querySelector('#detail-fields [data-field="duration"] dd');
      if (dd instanceof HTMLElement) setText(dd, durationText(detail));
    }
  }, 1000);
}

readFiltersFromUrl();
showFilters();
wire();
void loadList('first');
scheduleCounts();
connect();
const hashed = /^#job=([0-9a-f-]{36})$/.exec(location.hash);
if (hashed) openDetail(hashed[1]!);

export {};
