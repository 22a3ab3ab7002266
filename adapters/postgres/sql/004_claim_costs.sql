-- 004: what a claim costs. Its probes read one index entry, not the backlog; a lease's JSON is
-- encoded once; status events are built only while a process follows them.
--
-- Before a claim, settle() asks whether a due job has passed its age limit (it is then failed,
-- not handed out), and after a short claim, when the next delayed job comes due. The age-limit
-- probe was an EXISTS whose conditions included `run_at <= now`; its generic plan read job_ready
-- on that condition, which every due job meets, and fetched each job's row to test the age limit
-- that almost none has: every claim read the whole due backlog to find nothing. With 60,000 jobs
-- queued a worker of 50 ran 10,400 jobs a second, 31,000 after this change (the same as with
-- 5,000 queued). Both probes now read the first entry of the one index in their order
-- (`ORDER BY ... LIMIT 1`: job_expiring, job_ready), whatever the statistics say; the statement
-- that fails expired jobs runs only when that entry is past its limit, and applies the rest of the
-- conditions itself, the task apart: a job of any task past its age limit is failed by the
-- claim that finds it.
--
-- And a lease comes back with the job's JSON columns (payload, progress, result, error) embedded
-- as JSON rather than escaped into strings, so neither the server nor the worker encodes and
-- parses them twice (a few percent of a claim's cost). A worker of an earlier offload cannot read
-- these leases, and its web processes do not follow() events (below): stop every process of an
-- earlier offload before this migration runs (a lease one could not read expires, and its job
-- runs again).
--
-- And a settle builds and sends status events only while some process follows them (SSE streams,
-- `Prefer: wait`, the dashboard: a row in `follower`). Workers alone, no process listening, a call
-- spends nothing on events nobody would hear (8 % of its cost with a worker of 50). History rows
-- are written as before: a client that follows later still resumes from them. settle() is
-- otherwise as in 002.

-- The processes following job events: one row per connection LISTENing on the events channel
-- (its pid and start time, which tell it from a later connection given the same pid), written by
-- follow() and deleted by unfollow(), or by the next follow() once the connection is gone (a
-- process killed, a server restart). A row left behind only costs events built for nobody.
CREATE UNLOGGED TABLE {{schema}}.follower (pid integer PRIMARY KEY, backend_start timestamptz NOT NULL);

-- Follow job events from this connection, which LISTENs on the events channel already. Takes the
-- follow lock exclusively: it waits for the settles in flight, which hold it shared from their
-- start. So once this returns, every settle has either committed already (a read of the job now
-- sees it) or will see this row and send its events. While it waits, new settles wait behind it:
-- it gives up after a second (lock_timeout, SQLSTATE 55P03; the broker tries again later) rather
-- than hold every worker behind a settle that is itself waiting on a row.
CREATE FUNCTION {{schema}}.follow() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM set_config('lock_timeout', '1s', true);
  PERFORM pg_advisory_xact_lock(hashtext({{channel}} || ':follow'));
  DELETE FROM {{schema}}.follower f WHERE NOT EXISTS (
    SELECT 1 FROM pg_stat_activity a WHERE a.pid = f.pid AND a.backend_start = f.backend_start);
  INSERT INTO {{schema}}.follower (pid, backend_start)
  SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()
  ON CONFLICT (pid) DO UPDATE SET backend_start = excluded.backend_start;
END $$;

-- Stop following from this connection (before it closes).
CREATE FUNCTION {{schema}}.unfollow() RETURNS void LANGUAGE sql AS $$
  DELETE FROM {{schema}}.follower WHERE pid = pg_backend_pid()
$$;

-- Settle: end runs, each only if p_tokens[i] is its current lease (a requested cancel wins over
-- any outcome), then claim up to p_limit due jobs of p_tasks, oldest first, each leased for
-- p_lease_ms to this caller alone (SKIP LOCKED: concurrent claims take different jobs and never
-- wait). A due job past its age limit that never started is failed instead of handed out (of any
-- task), at most p_limit of them per call, found through job_expiring (its predicate spelled out in the
-- queries: without `expire_at IS NOT NULL` the generic plan walks the whole backlog in job_ready).
-- p_outcomes: 'complete' (p_values = result), 'fail' (p_values = error; p_retry_at NULL = final),
-- 'cancel', 'release' (back to the queue at once, the attempt not counted). With no runs it is
-- a plain claim. The claim is a statement of its own, after the runs ended: a run re-queued for
-- now is claimable by it. Every change gets its status event: a NOTIFY while a process follows
-- events (sent at commit, the ended runs' events first), and a history row (the last p_history
-- kept per job) unless history() reads it back from the job.
--
-- Set-based: the cost of a call is spread over the jobs it ends and claims (a busy worker
-- settles a batch of runs and claims their slots' next jobs at once).
--
-- The planner settings make the claim walk job_ready in order, never read every due job and sort
-- them: without fresh statistics (a new table, a burst) the planner thinks the queue is tiny and
-- picks that bitmap scan and sort, whose cost grows with the backlog.
--
-- Returns {"accepted":[bool per run],"leases":[records with token, JSON columns embedded],
-- "nextDue":ms|null} (nextDue: the earliest delayed job, when fewer than p_limit were leased).
CREATE OR REPLACE FUNCTION {{schema}}.settle(p_ids uuid[], p_tokens bigint[], p_outcomes text[], p_values text[],
  p_retry_at bigint[], p_tasks text[], p_limit integer, p_lease_ms bigint, p_history integer)
RETURNS text LANGUAGE plpgsql
SET enable_bitmapscan = off SET enable_seqscan = off SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
  now_ms bigint := {{schema}}.now_ms();
  accepted text;
  leases text;
  ev_ids uuid[] := '{}';
  ev_seqs integer[] := '{}';
  ev_bodies text[] := '{}';
  ev_bytes bigint := 0;
  top integer := 0;
  woke bigint;
  taken integer := 0;
  next_due bigint;
  followed boolean;
BEGIN
  -- Do not wait for the commit to reach the disk. A crash of the database server can then lose
  -- the last settles: their jobs are still running with leases that expire, so they run again
  -- (at-least-once, as when a worker dies). Enqueue keeps its synchronous commit: a 202 is kept.
  PERFORM set_config('synchronous_commit', 'off', true);
  -- Events only while a process follows them (see follow()). The row is read after the lock is
  -- taken: a follow() that committed meanwhile is seen.
  PERFORM pg_advisory_xact_lock_shared(hashtext({{channel}} || ':follow'));
  followed := EXISTS (SELECT 1 FROM {{schema}}.follower);
  IF coalesce(cardinality(p_ids), 0) > 0 THEN
    WITH runs AS (
      -- Sorted by job: two settles lock the rows they share in the same order (no deadlock).
      SELECT * FROM unnest(p_ids, p_tokens, p_outcomes, p_values, p_retry_at)
        WITH ORDINALITY AS t(id, token, outcome, value, retry_at, n)
      ORDER BY id
    ),
    ended AS (
      UPDATE {{schema}}.job j SET
        status = {{schema}}.run_end(r.outcome, r.retry_at, j.cancel_requested),
        seq = j.seq + 1,
        lease_until = NULL,
        finished_at = CASE WHEN {{schema}}.run_end(r.outcome, r.retry_at, j.cancel_requested) = 'queued'
                           THEN NULL ELSE now_ms END,
        cancel_requested = false,
        result = CASE WHEN {{schema}}.run_end(r.outcome, r.retry_at, j.cancel_requested) = 'succeeded'
                      THEN r.value END,
        error = CASE {{schema}}.run_end(r.outcome, r.retry_at, j.cancel_requested)
                  WHEN 'succeeded' THEN NULL
                  WHEN 'canceled' THEN j.error
                  ELSE CASE WHEN r.outcome = 'fail' THEN r.value ELSE j.error END END,
        attempts = CASE WHEN r.outcome = 'release' AND NOT j.cancel_requested THEN j.attempts - 1
                        ELSE j.attempts END,
        run_at = CASE WHEN {{schema}}.run_end(r.outcome, r.retry_at, j.cancel_requested) = 'queued'
                      THEN coalesce(r.retry_at, now_ms) ELSE j.run_at END,
        ord = CASE WHEN {{schema}}.run_end(r.outcome, r.retry_at, j.cancel_requested) = 'queued'
                   THEN nextval('{{schema}}.ord_seq') ELSE j.ord END
      FROM runs r
      -- The rows are read through the primary key (`id = ANY`: in id order). The token is
      -- compared only while the job runs, in a form job_running cannot serve: with `status =
      -- 'running'` spelled out, the generic plan reads every running job through that index.
      WHERE j.id = ANY (p_ids) AND j.id = r.id
        AND CASE WHEN j.status = 'running' THEN j.token END = r.token
      RETURNING r.n, j.id, j.seq, j.status, j.run_at,
        -- A run back in the queue keeps its event as a history row, followed or not.
        CASE WHEN followed OR j.status = 'queued' THEN
          {{schema}}.status_event(j.id, j.seq, now_ms, j.status, j.attempts, j.result, j.error, true) END AS body
    ),
    -- Only a run back in the queue leaves a history row: a final status is read back from the job.
    kept AS (
      INSERT INTO {{schema}}.event (job_id, seq, body) SELECT id, seq, body FROM ended WHERE status = 'queued'
    )
    SELECT string_agg((e.n IS NOT NULL)::text, ',' ORDER BY r.n),
      coalesce(array_agg(e.id) FILTER (WHERE e.n IS NOT NULL), '{}'),
      coalesce(array_agg(e.seq) FILTER (WHERE e.n IS NOT NULL), '{}'),
      coalesce(array_agg(e.body) FILTER (WHERE e.n IS NOT NULL), '{}'),
      coalesce(sum(octet_length(e.body) + 1), 0), coalesce(max(e.seq), 0),
      min(e.run_at) FILTER (WHERE e.status = 'queued')
    INTO accepted, ev_ids, ev_seqs, ev_bodies, ev_bytes, top, woke
    FROM generate_series(1, cardinality(p_ids)) AS r(n) LEFT JOIN ended e ON e.n = r.n;
    IF woke IS NOT NULL THEN PERFORM pg_notify({{channel}} || ':work', woke::text); END IF;
  END IF;

  IF p_limit > 0 AND cardinality(p_tasks) > 0 THEN
    -- Due jobs past their age limit that never started are failed, in a statement of its own that
    -- runs only when the earliest age limit of a queued job has passed: the usual call has none,
    -- and skips setting up an UPDATE for it. The probe reads one entry of job_expiring, the only
    -- index in expire_at order (an EXISTS with the UPDATE's conditions was planned through
    -- job_ready, and read every due job). Those of any task: a job past its age limit fails
    -- whoever finds it, so one of a task no worker is serving does not keep the probe true (and
    -- this statement running) at every claim of the others.
    IF (SELECT expire_at FROM {{schema}}.job
        WHERE status = 'queued' AND started_at IS NULL AND expire_at IS NOT NULL
        ORDER BY expire_at LIMIT 1) <= now_ms THEN
      WITH expired AS (
        UPDATE {{schema}}.job j SET status = 'failed', seq = j.seq + 1, finished_at = now_ms,
          error = '{"message":"The job was not started before its age limit.","code":"ERR_OFFLOAD_EXPIRED"}'
        WHERE j.id IN (
          SELECT id FROM {{schema}}.job
          WHERE status = 'queued' AND started_at IS NULL AND expire_at IS NOT NULL AND expire_at <= now_ms
            AND run_at <= now_ms
          ORDER BY expire_at
          LIMIT p_limit
          FOR UPDATE SKIP LOCKED
        )
        RETURNING j.id, j.seq,
          {{schema}}.status_event(j.id, j.seq, now_ms, 'failed', j.attempts, NULL, j.error, false) AS body
      ),
      kept AS (
        INSERT INTO {{schema}}.event (job_id, seq, body) SELECT id, seq, body FROM expired
      )
      SELECT ev_ids || coalesce(array_agg(id), '{}'), ev_seqs || coalesce(array_agg(seq), '{}'),
        ev_bodies || coalesce(array_agg(body), '{}'), ev_bytes + coalesce(sum(octet_length(body) + 1), 0),
        greatest(top, max(seq))
      INTO ev_ids, ev_seqs, ev_bodies, ev_bytes, top
      FROM expired;
    END IF;

    WITH picked AS (
      SELECT ctid, id, started_at FROM {{schema}}.job
      WHERE status = 'queued' AND run_at <= now_ms AND task = ANY (p_tasks)
        AND (expire_at IS NULL OR started_at IS NOT NULL OR expire_at > now_ms)
      ORDER BY run_at, ord
      LIMIT p_limit
      FOR UPDATE SKIP LOCKED
    ),
    claimed AS (
      UPDATE {{schema}}.job j SET status = 'running', attempts = j.attempts + 1, started_at = now_ms,
        token = nextval('{{schema}}.token_seq'), lease_until = now_ms + p_lease_ms, seq = j.seq + 1
      FROM picked
      -- By row address: the rows are locked, so their addresses hold until this update.
      WHERE j.ctid = picked.ctid
      RETURNING j.*
    ),
    events AS (
      -- A claim after the first (seq > 2) keeps its event as a history row, followed or not.
      SELECT id, seq, CASE WHEN followed OR seq <> 2 THEN
          {{schema}}.status_event(id, seq, now_ms, 'running', attempts, NULL, NULL, false) END AS body
      FROM claimed
    ),
    -- A job's first claim (seq 2) leaves no history row: history() reads it back from the job
    -- (started_at) until a later claim overwrites that; then it is written, with the time it had.
    kept AS (
      INSERT INTO {{schema}}.event (job_id, seq, body)
      SELECT id, seq, body FROM events WHERE seq <> 2
      UNION ALL
      SELECT p.id, 2, {{schema}}.status_event(p.id, 2, p.started_at, 'running', 1, NULL, NULL, false)
      FROM picked p JOIN claimed c ON c.id = p.id
      WHERE p.started_at IS NOT NULL AND c.seq - p_history < 2
      ON CONFLICT (job_id, seq) DO NOTHING
    )
    -- Each lease is the job's row as JSON, row_to_json's keys, with the JSON columns embedded as
    -- they are stored: row_to_json would escape each into a string, for the worker to parse again.
    SELECT (SELECT string_agg(concat('{"id":"', c.id, '","task":', to_json(c.task), ',"payload":', c.payload,
        ',"status":"running","progress":', coalesce(c.progress, 'null'), ',"result":', coalesce(c.result, 'null'),
        ',"error":', coalesce(c.error, 'null'), ',"attempts":', c.attempts, ',"max_attempts":', c.max_attempts,
        ',"run_at":', c.run_at, ',"created_at":', c.created_at, ',"started_at":', c.started_at,
        ',"finished_at":', coalesce(c.finished_at::text, 'null'), ',"expire_at":', coalesce(c.expire_at::text, 'null'),
        ',"timeout_ms":', coalesce(c.timeout_ms::text, 'null'), ',"owner":', coalesce(to_json(c.owner)::text, 'null'),
        ',"idempotency_key":', coalesce(to_json(c.idempotency_key)::text, 'null'),
        ',"payload_hash":', coalesce(to_json(c.payload_hash)::text, 'null'),
        ',"cancel_requested":', CASE WHEN c.cancel_requested THEN 'true' ELSE 'false' END, ',"seq":', c.seq,
        ',"token":', c.token, ',"logs":', to_json(c.logs), '}'), ',' ORDER BY c.run_at, c.ord) FROM claimed c),
      (SELECT count(*) FROM claimed),
      ev_ids || x.ids, ev_seqs || x.seqs, ev_bodies || x.bodies, ev_bytes + x.bytes, greatest(top, x.max_seq)
    INTO leases, taken, ev_ids, ev_seqs, ev_bodies, ev_bytes, top
    FROM (SELECT coalesce(array_agg(id), '{}') AS ids, coalesce(array_agg(seq), '{}') AS seqs,
            coalesce(array_agg(body), '{}') AS bodies, coalesce(sum(octet_length(body) + 1), 0) AS bytes,
            coalesce(max(seq), 0) AS max_seq
          FROM events) x;
  END IF;

  IF cardinality(ev_ids) > 0 THEN
    IF NOT followed THEN
      NULL;
    ELSIF ev_bytes <= 7890 THEN
      PERFORM pg_notify({{channel}} || ':events', '[' || array_to_string(ev_bodies, ',') || ']');
    ELSE
      PERFORM {{schema}}.announce(ev_ids, ev_seqs, ev_bodies);
    END IF;
    -- Keep the last p_history events of each job (only a job past that many has any to drop).
    IF top > p_history THEN
      DELETE FROM {{schema}}.event e USING unnest(ev_ids, ev_seqs) AS n(id, seq)
      WHERE n.seq > p_history AND e.job_id = n.id AND e.seq <= n.seq - p_history;
    END IF;
  END IF;
  IF taken < p_limit THEN
    -- The first entry of job_ready past now (min() would be planned as a scan of the delayed jobs
    -- when the statistics say there are few).
    SELECT run_at INTO next_due FROM {{schema}}.job WHERE status = 'queued' AND run_at > now_ms
      ORDER BY run_at LIMIT 1;
  END IF;
  RETURN '{"accepted":[' || coalesce(accepted, '') || '],"leases":[' || coalesce(leases, '')
    || '],"nextDue":' || coalesce(next_due::text, 'null') || '}';
END $$;
