-- 002: settle() in fewer steps, the same guarantees and the same answer.
--
-- A settle now
-- - ends its runs with one UPDATE that reads them through the primary key (no separate locking
--   pass: the UPDATE takes each row lock itself, and rechecks the token and reads cancel_requested
--   from the newest row version when another transaction changed it first; before, the generic
--   plan read every running job through job_running);
-- - claims by row address (the rows its SKIP LOCKED scan locked), and fails expired jobs in a
--   statement that runs only when a probe finds one;
-- - writes each statement's history rows in that statement and sends its events in one NOTIFY
--   inline. publish() (a function call of its own, with a second INSERT and a scan of the events)
--   is gone; announce() packs events that do not fit one NOTIFY.
-- Measured against the settle of 001 with a worker of 50 (calls of 25 runs ended and 25 jobs
-- claimed): 10-15 % more jobs per second, 5-15 % less server CPU per job (BENCHMARKS.md).

DROP FUNCTION {{schema}}.publish(uuid[], integer[], text[], integer);

-- What a run's outcome makes of its job: 'complete' succeeds, 'fail' fails for good without a
-- retry time or goes back to the queue with one, 'release' goes back to the queue, and a requested
-- cancel wins over any of them. Plain SQL: inlined where it is used.
CREATE FUNCTION {{schema}}.run_end(p_outcome text, p_retry_at bigint, p_cancel_requested boolean)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN p_outcome = 'cancel' OR p_cancel_requested THEN 'canceled'
              WHEN p_outcome = 'complete' THEN 'succeeded'
              WHEN p_outcome = 'fail' AND p_retry_at IS NULL THEN 'failed'
              ELSE 'queued' END
$$;

-- A status event as listeners get it and history() reads it back: one builder, so an event read
-- back from a job is the text that was announced. A final status carries the result and the
-- error; a job back in the queue carries its error when p_error_too (a retry's or a release's,
-- not a job's first queued event); a claim carries neither. Plain SQL, inlined where it is used:
-- STABLE, as `||` on a uuid or a number is (declared IMMUTABLE it would not be inlined, and would
-- run as a function call for every event).
CREATE FUNCTION {{schema}}.status_event(p_id uuid, p_seq integer, p_at bigint, p_status text,
  p_attempts integer, p_result text, p_error text, p_error_too boolean)
RETURNS text LANGUAGE sql STABLE AS $$
  SELECT '{"jobId":"' || p_id || '","seq":' || p_seq || ',"at":' || p_at
    || ',"type":"status","status":"' || p_status || '","attempts":' || p_attempts
    || CASE WHEN p_status IN ('succeeded', 'failed', 'canceled')
         THEN ',"result":' || coalesce(p_result, 'null') || ',"error":' || coalesce(p_error, 'null')
         WHEN p_error_too THEN ',"error":' || coalesce(p_error, 'null')
         ELSE '' END
    || '}'
$$;

-- Queue the NOTIFYs of events too many for one (8000 bytes): JSON arrays of up to about 7900
-- bytes, an event too large for any payload announced by reference (listeners read it from the
-- history). settle() sends the usual few dozen status events in one NOTIFY without calling this.
CREATE FUNCTION {{schema}}.announce(p_ids uuid[], p_seqs integer[], p_bodies text[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  buf text := '';
  ev text;
BEGIN
  FOR i IN 1 .. coalesce(cardinality(p_ids), 0) LOOP
    ev := CASE WHEN octet_length(p_bodies[i]) > 7900
      THEN '{"jobId":"' || p_ids[i] || '","seq":' || p_seqs[i] || ',"ref":true}' ELSE p_bodies[i] END;
    IF buf <> '' AND octet_length(buf) + octet_length(ev) > 7890 THEN
      PERFORM pg_notify({{channel}} || ':events', '[' || buf || ']');
      buf := '';
    END IF;
    buf := buf || CASE WHEN buf = '' THEN '' ELSE ',' END || ev;
  END LOOP;
  IF buf <> '' THEN PERFORM pg_notify({{channel}} || ':events', '[' || buf || ']'); END IF;
END $$;

-- Settle: end runs, each only if p_tokens[i] is its current lease (a requested cancel wins over
-- any outcome), then claim up to p_limit due jobs of p_tasks, oldest first, each leased for
-- p_lease_ms to this caller alone (SKIP LOCKED: concurrent claims take different jobs and never
-- wait). A due job past its age limit that never started is failed instead of handed out, at
-- most p_limit of them per call, found through job_expiring (its predicate spelled out in the
-- query: without `expire_at IS NOT NULL` the generic plan walks the whole backlog in job_ready).
-- p_outcomes: 'complete' (p_values = result), 'fail' (p_values = error; p_retry_at NULL = final),
-- 'cancel', 'release' (back to the queue at once, the attempt not counted). With no runs it is
-- a plain claim. The claim is a statement of its own, after the runs ended: a run re-queued for
-- now is claimable by it. Every change gets its status event: a history row (the last
-- p_history kept per job) and a NOTIFY, sent at commit with the ended runs' events first.
--
-- Set-based: the cost of a call is spread over the jobs it ends and claims (a busy worker
-- settles a batch of runs and claims their slots' next jobs at once).
--
-- The planner settings make the claim walk job_ready in order, never read every due job and sort
-- them: without fresh statistics (a new table, a burst) the planner thinks the queue is tiny and
-- picks that bitmap scan and sort, whose cost grows with the backlog.
--
-- Returns {"accepted":[bool per run],"leases":[records with token, without logs],
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
BEGIN
  -- Do not wait for the commit to reach the disk. A crash of the database server can then lose
  -- the last settles: their jobs are still running with leases that expire, so they run again
  -- (at-least-once, as when a worker dies). Enqueue keeps its synchronous commit: a 202 is kept.
  PERFORM set_config('synchronous_commit', 'off', true);
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
        {{schema}}.status_event(j.id, j.seq, now_ms, j.status, j.attempts, j.result, j.error, true) AS body
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
    -- runs only when the probe through job_expiring finds one: the usual call has none, and skips
    -- setting up an UPDATE for it.
    IF EXISTS (
      SELECT 1 FROM {{schema}}.job
      WHERE status = 'queued' AND started_at IS NULL AND expire_at IS NOT NULL AND expire_at <= now_ms
        AND run_at <= now_ms AND task = ANY (p_tasks)
    ) THEN
      WITH expired AS (
        UPDATE {{schema}}.job j SET status = 'failed', seq = j.seq + 1, finished_at = now_ms,
          error = '{"message":"The job was not started before its age limit.","code":"ERR_OFFLOAD_EXPIRED"}'
        WHERE j.id IN (
          SELECT id FROM {{schema}}.job
          WHERE status = 'queued' AND started_at IS NULL AND expire_at IS NOT NULL AND expire_at <= now_ms
            AND run_at <= now_ms AND task = ANY (p_tasks)
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
      SELECT id, seq, {{schema}}.status_event(id, seq, now_ms, 'running', attempts, NULL, NULL, false) AS body
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
    SELECT (SELECT string_agg(row_to_json(c)::text, ',' ORDER BY c.run_at, c.ord) FROM claimed c),
      (SELECT count(*) FROM claimed),
      ev_ids || x.ids, ev_seqs || x.seqs, ev_bodies || x.bodies, ev_bytes + x.bytes, greatest(top, x.max_seq)
    INTO leases, taken, ev_ids, ev_seqs, ev_bodies, ev_bytes, top
    FROM (SELECT coalesce(array_agg(id), '{}') AS ids, coalesce(array_agg(seq), '{}') AS seqs,
            coalesce(array_agg(body), '{}') AS bodies, coalesce(sum(octet_length(body) + 1), 0) AS bytes,
            coalesce(max(seq), 0) AS max_seq
          FROM events) x;
  END IF;

  IF cardinality(ev_ids) > 0 THEN
    IF ev_bytes <= 7890 THEN
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
    SELECT min(run_at) INTO next_due FROM {{schema}}.job WHERE status = 'queued' AND run_at > now_ms;
  END IF;
  RETURN '{"accepted":[' || coalesce(accepted, '') || '],"leases":[' || coalesce(leases, '')
    || '],"nextDue":' || coalesce(next_due::text, 'null') || '}';
END $$;

-- Admin retry: a failed or canceled job runs again as new (attempts reset). Returns the record,
-- or NULL when the job is not failed or canceled. The events history() read from the job row
-- (its final status, its first claim) are written first: the row is about to forget them.
CREATE OR REPLACE FUNCTION {{schema}}.retry(p_id uuid, p_history integer) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  j {{schema}}.job;
BEGIN
  SELECT * INTO j FROM {{schema}}.job WHERE id = p_id AND status IN ('failed', 'canceled') FOR UPDATE;
  IF NOT FOUND THEN RETURN NULL; END IF;
  INSERT INTO {{schema}}.event (job_id, seq, body)
  SELECT j.id, j.seq,
    {{schema}}.status_event(j.id, j.seq, j.finished_at, j.status, j.attempts, j.result, j.error, false)
  UNION ALL
  SELECT j.id, 2, {{schema}}.status_event(j.id, 2, j.started_at, 'running', 1, NULL, NULL, false)
  WHERE j.started_at IS NOT NULL AND j.seq > 2 AND j.seq - p_history < 2
  ON CONFLICT (job_id, seq) DO NOTHING;
  UPDATE {{schema}}.job SET cancel_requested = false, result = NULL, progress = NULL, started_at = NULL,
    finished_at = NULL, expire_at = NULL
  WHERE id = p_id;
  PERFORM {{schema}}.requeue(j, {{schema}}.now_ms(), NULL, 0, p_history);
  SELECT * INTO j FROM {{schema}}.job WHERE id = p_id;
  RETURN row_to_json(j)::text;
END $$;
