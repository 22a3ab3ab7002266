/**
 * The SQLite broker's schema. `SqliteBroker` creates it in one IMMEDIATE transaction when it opens
 * a new file and records SCHEMA_VERSION in `PRAGMA user_version`; a later version of offload reads
 * that number to migrate the file (and refuses a file from a newer one). Times are epoch ms from the
 * processes' `Date.now()` (they share one machine). JSON values are stored as JSON text.
 */
export const SCHEMA_VERSION = 1;

/** The tables offload creates; a new file holding any other table is someone else's. */
export const SCHEMA_TABLES: readonly string[] = ['jobs', 'events', 'counts', 'sqlite_sequence'];

export const SCHEMA: readonly string[] = [
  // One row per job until purge. `token` is the current lease (NULL when no run holds the job):
  // every write of a run names it, so a worker whose lease was lost is refused. `ord` breaks ties
  // between jobs due in the same ms: the id of the event that (re)queued the job, which only grows.
  // `idem_scope` is JSON [owner, task, key]; the CHECK keeps a bad write from inventing a status.
  `CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    progress TEXT,
    result TEXT,
    error TEXT,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    run_at INTEGER NOT NULL,
    ord INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    expire_at INTEGER,
    timeout_ms INTEGER,
    owner TEXT,
    idempotency_key TEXT,
    idem_scope TEXT,
    payload_hash TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL,
    token TEXT,
    lease_until INTEGER,
    logs TEXT
  )`,
  // Claim: one task's due jobs in the order they came due, read in index order (no sort); the
  // partial index holds queued jobs only, so finished ones never slow a claim down.
  `CREATE INDEX jobs_queued ON jobs (task, run_at, ord) WHERE status = 'queued'`,
  // Recover: running jobs by lease end.
  `CREATE INDEX jobs_leases ON jobs (lease_until) WHERE status = 'running'`,
  // Purge: finished jobs by when they finished (exactly the finished ones have finished_at).
  `CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL`,
  // Idempotency: one job per (owner, task, key) until it is purged, whatever the callers race.
  `CREATE UNIQUE INDEX jobs_idem ON jobs (idem_scope) WHERE idem_scope IS NOT NULL`,
  // List, newest first: every job, or one owner's.
  `CREATE INDEX jobs_created ON jobs (created_at, id)`,
  `CREATE INDEX jobs_owner ON jobs (owner, created_at, id)`,
  // Job events: the history `Last-Event-ID` resumes from, and the feed other processes read by id
  // (AUTOINCREMENT: an id is never reused, even once the newest rows are deleted, so "rows after id
  // N" is a cursor no process can be fooled by). kind 0 is an event kept as history; kind 1 a
  // cancel request (for workers and subscribers, never history). `wake_at`, on an event that
  // (re)queues a job, is when the job comes due: idle workers look then. Capped per job by the
  // broker's historyLimit; a job's rows go with it at purge.
  `CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    wake_at INTEGER,
    body TEXT NOT NULL
  )`,
  // History of one job in seq order, and the per-job cap's delete.
  `CREATE INDEX events_job ON events (job_id, seq)`,
  // Jobs per status, kept by the triggers below in the transaction of every change: counts() and
  // the maxQueued check read one row instead of counting the queue.
  `CREATE TABLE counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID`,
  `INSERT INTO counts (status, n) VALUES ('queued', 0), ('running', 0), ('succeeded', 0), ('failed', 0), ('canceled', 0)`,
  `CREATE TRIGGER jobs_counted_insert AFTER INSERT ON jobs BEGIN
    UPDATE counts SET n = n + 1 WHERE status = new.status;
  END`,
  `CREATE TRIGGER jobs_counted_delete AFTER DELETE ON jobs BEGIN
    UPDATE counts SET n = n - 1 WHERE status = old.status;
  END`,
  `CREATE TRIGGER jobs_counted_update AFTER UPDATE OF status ON jobs WHEN old.status <> new.status BEGIN
    UPDATE counts SET n = n - 1 WHERE status = old.status;
    UPDATE counts SET n = n + 1 WHERE status = new.status;
  END`,
];
