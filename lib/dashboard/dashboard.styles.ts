/**
 * The dashboard's stylesheet, served at `<mount>/assets/dashboard.css`. Sizes are fixed where
 * live data changes (column widths, progress cells, counts, tabular digits), so a progress event
 * or a status change never moves anything else; the detail panel overlays the list.
 */
export const DASHBOARD_STYLES = `
:root {
  color-scheme: light dark;
  --bg: #ffffff;
  --fg: #1b1f24;
  --muted: #59636e;
  --line: #d1d9e0;
  --row-hover: #f3f6f9;
  --row-current: #e8f0fe;
  --panel: #ffffff;
  --focus: #0b62d6;
  --track: #e4e8ec;
  --bar: #0b62d6;
  --queued-bg: #eef1f4; --queued-fg: #3d4650;
  --running-bg: #dbe9ff; --running-fg: #0a4aa3;
  --succeeded-bg: #dcf3e3; --succeeded-fg: #10652e;
  --failed-bg: #fde2e1; --failed-fg: #a4161a;
  --canceled-bg: #fbefd5; --canceled-fg: #7a4a00;
  --error-bg: #fde2e1; --error-fg: #a4161a;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0f1318;
    --fg: #e6eaee;
    --muted: #9aa5b1;
    --line: #2c343d;
    --row-hover: #171d24;
    --row-current: #1a2b45;
    --panel: #151b22;
    --focus: #6aa8ff;
    --track: #2a323b;
    --bar: #5b9dff;
    --queued-bg: #242b33; --queued-fg: #c3ccd5;
    --running-bg: #132c52; --running-fg: #a9cbff;
    --succeeded-bg: #10321d; --succeeded-fg: #8fe0a9;
    --failed-bg: #3d1416; --failed-fg: #ffaaa6;
    --canceled-bg: #3a2a09; --canceled-fg: #f3cf86;
    --error-bg: #3d1416; --error-fg: #ffaaa6;
  }
}
* { box-sizing: border-box; }
html { scrollbar-gutter: stable; }
body {
  margin: 0;
  padding: 1rem 1.5rem 3rem;
  background: var(--bg);
  color: var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  font-variant-numeric: tabular-nums;
}
code, pre { font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
:focus-visible { outline: 2px solid var(--focus); outline-offset: 2px; }
button, input, select {
  font: inherit;
  color: inherit;
  background: var(--bg);
  border: 1px solid var(--line);
  border-radius: 6px;
  padding: .3rem .6rem;
}
button { cursor: pointer; }
button:disabled { cursor: not-allowed; opacity: .5; }
.top { display: flex; align-items: baseline; gap: 1rem; }
.top h1 { font-size: 1.25rem; margin: 0 0 .75rem; }
.live {
  display: inline-block;
  min-width: 11rem;
  color: var(--muted);
  font-size: .85rem;
}
.live::before {
  content: "";
  display: inline-block;
  width: .55rem; height: .55rem;
  margin-right: .4rem;
  border-radius: 50%;
  background: var(--muted);
  vertical-align: baseline;
}
.live[data-state="live"]::before { background: #1f9d55; }
.live[data-state="offline"]::before { background: #d93025; }
.counts { display: flex; flex-wrap: wrap; gap: .5rem; margin-bottom: .75rem; }
.count { min-width: 7.5rem; text-align: left; display: inline-flex; justify-content: space-between; gap: .75rem; }
.count .n { font-weight: 600; min-width: 3ch; text-align: right; }
.count[aria-pressed="true"] { border-color: var(--focus); box-shadow: inset 0 0 0 1px var(--focus); }
.count[data-status="queued"] .label, .badge[data-status="queued"] { color: var(--queued-fg); }
.count[data-status="running"] .label { color: var(--running-fg); }
.count[data-status="succeeded"] .label { color: var(--succeeded-fg); }
.count[data-status="failed"] .label { color: var(--failed-fg); }
.count[data-status="canceled"] .label { color: var(--canceled-fg); }
.filters { display: flex; flex-wrap: wrap; align-items: center; gap: .5rem 1rem; margin-bottom: .75rem; }
.filters label { display: inline-flex; align-items: center; gap: .4rem; color: var(--muted); }
.filters input { width: 12rem; }
.error { background: var(--error-bg); color: var(--error-fg); padding: .5rem .75rem; border-radius: 6px; margin-bottom: .75rem; }
.jobs { width: 100%; min-width: 60rem; table-layout: fixed; border-collapse: collapse; }
.jobs caption { caption-side: bottom; text-align: left; color: var(--muted); font-size: .8rem; padding-top: .5rem; }
.jobs th, .jobs td {
  padding: 0 .5rem;
  height: 2.25rem;
  border-bottom: 1px solid var(--line);
  text-align: left;
  white-space: nowrap;
  overflow: hidden;
  text-overflow: ellipsis;
}
.jobs th { color: var(--muted); font-weight: 600; font-size: .8rem; text-transform: uppercase; letter-spacing: .03em; }
.jobs .num, .jobs td[data-col="attempts"], .jobs td[data-col="created"], .jobs td[data-col="duration"] { text-align: right; }
.c-id { width: 6.5rem; }
.c-task { width: 12%; }
.c-owner { width: 10%; }
.c-status { width: 7.5rem; }
.c-progress { width: auto; }
.c-attempts { width: 6.5rem; }
.c-created { width: 7.5rem; }
.c-duration { width: 6.5rem; }
tr.job { cursor: pointer; }
tr.job:hover { background: var(--row-hover); }
tr.job[aria-current="true"] { background: var(--row-current); }
tr.job:focus-visible { outline: 2px solid var(--focus); outline-offset: -2px; }
.badge {
  display: inline-block;
  min-width: 5.75rem;
  padding: 0 .5rem;
  border-radius: 999px;
  font-size: .8rem;
  font-weight: 600;
  line-height: 1.5rem;
  text-align: center;
  background: var(--queued-bg);
  color: var(--queued-fg);
}
.badge[data-status="running"] { background: var(--running-bg); color: var(--running-fg); }
.badge[data-status="succeeded"] { background: var(--succeeded-bg); color: var(--succeeded-fg); }
.badge[data-status="failed"] { background: var(--failed-bg); color: var(--failed-fg); }
.badge[data-status="canceled"] { background: var(--canceled-bg); color: var(--canceled-fg); }
td[data-col="progress"] .progress-line { display: flex; align-items: center; gap: .5rem; }
.progress {
  flex: none;
  width: 8rem;
  height: .55rem;
  border-radius: 999px;
  background: var(--track);
  overflow: hidden;
}
.progress .fill {
  width: 100%;
  height: 100%;
  background: var(--bar);
  transform: scaleX(0);
  transform-origin: left center;
  transition: transform .2s ease-out;
}
tr[data-status="succeeded"] .progress .fill { background: #1f9d55; }
tr[data-status="failed"] .progress .fill { background: #d93025; }
tr[data-status="canceled"] .progress .fill { background: #c58a00; }
.detail[data-status="succeeded"] .progress .fill { background: #1f9d55; }
.detail[data-status="failed"] .progress .fill { background: #d93025; }
.detail[data-status="canceled"] .progress .fill { background: #c58a00; }
.pct { flex: none; width: 3.5rem; text-align: right; }
.msg { flex: 1 1 auto; min-width: 0; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; color: var(--muted); }
.empty { color: var(--muted); }
.more { min-height: 2.5rem; }
.detail {
  position: fixed;
  top: 0; right: 0; bottom: 0;
  width: min(38rem, 100vw);
  overflow-y: auto;
  padding: 1rem 1.25rem 2rem;
  background: var(--panel);
  border-left: 1px solid var(--line);
  box-shadow: -8px 0 24px rgba(0, 0, 0, .12);
}
.detail:focus { outline: none; }
/* Room for both on a wide screen: the list narrows while a job is open (not while it updates). */
@media (min-width: 100rem) {
  body.detail-open { padding-right: calc(38rem + 1.5rem); }
}
.detail-head { display: flex; align-items: center; justify-content: space-between; gap: 1rem; }
.detail-head h2 { font-size: 1.05rem; margin: 0; overflow-wrap: anywhere; }
.detail h3 { font-size: .85rem; color: var(--muted); text-transform: uppercase; letter-spacing: .03em; margin: 1.25rem 0 .4rem; }
.actions { display: flex; gap: .5rem; margin: .75rem 0 .25rem; }
.message { min-height: 1.45em; margin: .25rem 0; }
.detail .progress-line { display: flex; align-items: center; gap: .5rem; }
.detail .progress-line .progress { width: 20rem; max-width: 70%; }
.detail .msg { white-space: normal; min-height: 1.45em; margin: .25rem 0 0; }
.fields { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; margin: 1rem 0 0; }
.fields div { display: contents; }
.fields dt { color: var(--muted); }
.fields dd { margin: 0; overflow-wrap: anywhere; }
.detail pre {
  margin: 0;
  padding: .6rem .75rem;
  max-height: 16rem;
  overflow: auto;
  background: var(--row-hover);
  border: 1px solid var(--line);
  border-radius: 6px;
  white-space: pre-wrap;
  overflow-wrap: anywhere;
}
@media (prefers-reduced-motion: reduce) {
  .progress .fill { transition: none; }
}
`;
