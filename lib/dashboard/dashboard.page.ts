/** `&`, `<`, `>`, `"` and `'` as entities: safe in text and in quoted attributes. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export interface DashboardPageInput {
  /** Where the dashboard is mounted, as the browser sees it (no trailing slash); '' at the root. */
  base: string;
  title: string;
  /** Task names offered in the task filter. */
  tasks: readonly string[];
}

const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'canceled'] as const;

/**
 * The dashboard's HTML. Its ids and data attributes are a contract with the browser tests and
 * with dashboard.client.mts (see the README's dashboard section); the script fills it in.
 */
export function renderDashboardPage({ base, title, tasks }: DashboardPageInput): string {
  const b = escapeHtml(base);
  const t = escapeHtml(title);
  const countButtons = STATUSES.map(
    (s) =>
      `<button type="button" class="count" data-status="${s}" aria-pressed="false"><span class="label">${s}</span> <span class="n" id="count-${s}">–</span></button>`,
  ).join('\n      ');
  const statusOptions = STATUSES.map((s) => `<option value="${s}">${s}</option>`).join('');
  const taskOptions = tasks.map((name) => `<option value="${escapeHtml(name)}"></option>`).join('');
  return `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <meta name="color-scheme" content="light dark">
  <meta name="referrer" content="same-origin">
  <title>${t}</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="${b}/assets/dashboard.css">
  <script type="module" src="${b}/assets/dashboard.js"></script>
</head>
<body data-base="${b}">
  <header class="top">
    <h1>${t}</h1>
    <span id="live" class="live" role="status" aria-live="polite" data-state="connecting">Connecting…</span>
  </header>
  <nav id="counts" class="counts" aria-label="Jobs per status (filters the list)">
    <button type="button" class="count" data-status="" aria-pressed="true"><span class="label">all</span> <span class="n" id="count-total">–</span></button>
      ${countButtons}
  </nav>
  <form id="filters" class="filters" role="search" aria-label="Filter jobs">
    <label>Status <select id="filter-status" name="status"><option value="">any</option>${statusOptions}</select></label>
    <label>Task <input id="filter-task" name="task" list="task-names" autocomplete="off" spellcheck="false" placeholder="any"></label>
    <label>Owner <input id="filter-owner" name="owner" autocomplete="off" spellcheck="false" placeholder="any"></label>
    <datalist id="task-names">${taskOptions}</datalist>
    <button type="submit" id="filter-apply">Apply</button>
    <button type="reset" id="filter-clear">Clear</button>
  </form>
  <div id="error" class="error" role="alert" hidden></div>
  <main>
    <table id="jobs" class="jobs" aria-busy="true" aria-describedby="jobs-help">
      <caption id="jobs-help">Newest first. Arrow keys move between jobs; Enter opens one; Escape closes it.</caption>
      <colgroup>
        <col class="c-id"><col class="c-task"><col class="c-owner"><col class="c-status">
        <col class="c-progress"><col class="c-attempts"><col class="c-created"><col class="c-duration">
      </colgroup>
      <thead>
        <tr>
          <th scope="col">Job</th><th scope="col">Task</th><th scope="col">Owner</th><th scope="col">Status</th>
          <th scope="col">Progress</th><th scope="col" class="num">Attempts</th><th scope="col" class="num">Created</th><th scope="col" class="num">Duration</th>
        </tr>
      </thead>
      <tbody id="job-rows"></tbody>
    </table>
    <p id="empty" class="empty" hidden>No jobs match.</p>
    <p class="more"><button type="button" id="more" hidden>Load more</button></p>
  </main>
  <aside id="detail" class="detail" role="region" aria-labelledby="detail-title" tabindex="-1" hidden>
    <header class="detail-head">
      <h2 id="detail-title">Job <code id="detail-id"></code></h2>
      <button type="button" id="detail-close" aria-label="Close job details (Escape)">Close</button>
    </header>
    <p class="detail-status"><span id="detail-status" class="badge"></span></p>
    <div class="actions">
      <button type="button" id="detail-cancel" data-action="cancel" disabled>Cancel job</button>
      <button type="button" id="detail-retry" data-action="retry" disabled>Retry job</button>
    </div>
    <p id="detail-message" class="message" role="status" aria-live="polite"></p>
    <section aria-labelledby="detail-progress-title">
      <h3 id="detail-progress-title">Progress</h3>
      <div class="progress-line">
        <div id="detail-progress" class="progress" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="0" aria-labelledby="detail-progress-title"><div id="detail-progress-fill" class="fill"></div></div>
        <span id="detail-progress-pct" class="pct">—</span>
      </div>
      <p id="detail-progress-message" class="msg"></p>
    </section>
    <dl id="detail-fields" class="fields"></dl>
    <section aria-labelledby="detail-payload-title">
      <h3 id="detail-payload-title">Payload</h3>
      <pre id="detail-payload" tabindex="0"></pre>
    </section>
    <section id="detail-outcome" aria-labelledby="detail-outcome-title" hidden>
      <h3 id="detail-outcome-title">Result</h3>
      <pre id="detail-outcome-body" tabindex="0"></pre>
    </section>
    <section aria-labelledby="detail-logs-title">
      <h3 id="detail-logs-title">Logs (<span id="detail-logs-count">0</span>)</h3>
      <pre id="detail-logs" class="logs" tabindex="0"></pre>
    </section>
  </aside>
</body>
</html>
`;
}
