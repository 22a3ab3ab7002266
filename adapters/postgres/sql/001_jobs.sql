-- 001: jobs, their event history, and the functions that change them.
--
-- {{schema}} is the broker's schema (a quoted identifier); {{channel}} the prefix of its NOTIFY
-- channels (text). Times are epoch milliseconds from the database server's clock (now_ms()), so
-- every process agrees on leases. JSON values (payload, progress, result, error) are stored as
-- the text the client sent and handed back as is: never re-encoded.
--
-- Every state change is one function call, one transaction: a job is claimed by exactly one
-- caller (FOR UPDATE SKIP LOCKED), and a write names the lease token it holds. Events are rows of
-- {{schema}}.event (the history a reconnecting SSE client resumes from) and NOTIFYs, sent at
-- commit: a listener never hears of a change it could not yet read.

CREATE TABLE {{schema}}.job (
  id uuid PRIMARY KEY,
  task text NOT NULL,
  payload text NOT NULL,
  status text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
  progress text,
  result text,
  error text,
  attempts integer NOT NULL DEFAULT 0,
  max_attempts integer NOT NULL,
  run_at bigint NOT NULL,
  -- When the job became due, as a sequence number: FIFO among jobs due in the same millisecond.
  ord bigint NOT NULL,
  created_at bigint NOT NULL,
  started_at bigint,
  finished_at bigint,
  expire_at bigint,
  timeout_ms integer,
  owner text,
  idem text,
  idempotency_key text,
  payload_hash text,
  cancel_requested boolean NOT NULL DEFAULT false,
  seq integer NOT NULL DEFAULT 1,
  token bigint,
  lease_until bigint,
  logs text[] NOT NULL DEFAULT '{}'
);

-- Every claim and settle leaves dead row versions and index entries behind (no update of a job
-- is HOT), and claims step over the dead entries at the head of job_ready until a vacuum. Vacuum
-- and analyze this table after a few hundred changes, not after a fifth of it as by default.
ALTER TABLE {{schema}}.job SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 500,
  autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 500);

CREATE SEQUENCE {{schema}}.ord_seq;
CREATE SEQUENCE {{schema}}.token_seq;

-- Claim: due jobs, oldest first.
CREATE INDEX job_ready ON {{schema}}.job (run_at, ord) WHERE status = 'queued';
-- Recovery: running jobs by lease end.
CREATE INDEX job_running ON {{schema}}.job (lease_until) WHERE status = 'running';
-- Age limits: queued jobs with one, that may expire before they start.
CREATE INDEX job_expiring ON {{schema}}.job (expire_at)
  WHERE status = 'queued' AND started_at IS NULL AND expire_at IS NOT NULL;
-- Purge: finished jobs by end time.
CREATE INDEX job_finished ON {{schema}}.job (finished_at) WHERE finished_at IS NOT NULL;
-- Listing, newest first, all or one owner's. Jobs without owner are listed through job_created:
-- left out of job_owner, they cost no entry there at each of their updates (no update of a job is
-- HOT: its status is in the predicates of the partial indexes).
CREATE INDEX job_created ON {{schema}}.job (created_at DESC, id DESC);
CREATE INDEX job_owner ON {{schema}}.job (owner, created_at DESC, id DESC) WHERE owner IS NOT NULL;
-- Idempotency keys: one job per (owner, task, key), hashed by the client.
CREATE UNIQUE INDEX job_idem ON {{schema}}.job (idem) WHERE idem IS NOT NULL;

CREATE UNLOGGED TABLE {{schema}}.event (
  job_id uuid NOT NULL,
  seq integer NOT NULL,
  body text NOT NULL,
  PRIMARY KEY (job_id, seq)
);

-- The database server's clock in ms (the transaction's start: one time per call).
CREATE FUNCTION {{schema}}.now_ms() RETURNS bigint LANGUAGE sql STABLE AS $$
  SELECT (extract(epoch FROM now()) * 1000)::bigint
$$;

-- Record an event (history row) and queue its NOTIFY. An event too large for a NOTIFY payload
-- (8000 bytes) is announced by reference; listeners read it from the history.
CREATE FUNCTION {{schema}}.emit(p_job uuid, p_seq integer, p_body text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  ev text := '{"jobId":"' || p_job || '","seq":' || p_seq || ',"at":' || {{schema}}.now_ms() || ',' || p_body || '}';
BEGIN
  INSERT INTO {{schema}}.event (job_id, seq, body) VALUES (p_job, p_seq, ev);
  IF octet_length(ev) > 7900 THEN
    ev := '{"jobId":"' || p_job || '","seq":' || p_seq || ',"ref":true}';
  END IF;
  PERFORM pg_notify({{channel}} || ':events', ev);
END $$;

-- Keep the last p_limit events of a job.
CREATE FUNCTION {{schema}}.trim_history(p_job uuid, p_seq integer, p_limit integer) RETURNS void
LANGUAGE sql AS $$
  DELETE FROM {{schema}}.event WHERE job_id = p_job AND seq <= p_seq - p_limit
$$;

-- End a job (the caller holds its row lock). Emits the status event.
CREATE FUNCTION {{schema}}.finish(j {{schema}}.job, p_status text, p_result text, p_error text, p_history integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  now_ms bigint := {{schema}}.now_ms();
  err text := CASE WHEN p_status = 'succeeded' THEN NULL ELSE coalesce(p_error, j.error) END;
BEGIN
  UPDATE {{schema}}.job SET status = p_status, finished_at = now_ms, cancel_requested = false,
    seq = j.seq + 1, result = p_result, error = err, lease_until = NULL
  WHERE id = j.id;
  PERFORM {{schema}}.emit(j.id, j.seq + 1, '"type":"status","status":"' || p_status || '","attempts":' || j.attempts
    || ',"result":' || coalesce(p_result, 'null') || ',"error":' || coalesce(err, 'null'));
  IF j.seq + 1 > p_history THEN PERFORM {{schema}}.trim_history(j.id, j.seq + 1, p_history); END IF;
END $$;

-- Back to queued (retry, lost lease, release, admin retry), due at p_run_at; p_error becomes
-- the job's error (NULL clears it). Emits the status event and wakes workers.
CREATE FUNCTION {{schema}}.requeue(j {{schema}}.job, p_run_at bigint, p_error text, p_attempts integer, p_history integer)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  UPDATE {{schema}}.job SET status = 'queued', run_at = p_run_at, ord = nextval('{{schema}}.ord_seq'),
    seq = j.seq + 1, error = p_error, attempts = p_attempts, lease_until = NULL, finished_at = NULL
  WHERE id = j.id;
  PERFORM {{schema}}.emit(j.id, j.seq + 1, '"type":"status","status":"queued","attempts":' || p_attempts
    || ',"error":' || coalesce(p_error, 'null'));
  IF j.seq + 1 > p_history THEN PERFORM {{schema}}.trim_history(j.id, j.seq + 1, p_history); END IF;
  PERFORM pg_notify({{channel}} || ':work', p_run_at::text);
END $$;

-- Enqueue: a new queued job (seq 1), or the job an idempotency key already names (not created).
-- With p_max_queued, refuse (NULL) when that many jobs are queued; the count is taken under a
-- transaction-level advisory lock so two enqueues cannot both take the last place.
-- Returns {"created":bool,"job":record} or NULL when the queue is full.
CREATE FUNCTION {{schema}}.enqueue(p_id uuid, p_task text, p_payload text, p_owner text, p_max_attempts integer,
  p_run_at bigint, p_expire_at bigint, p_timeout_ms integer, p_idem text, p_idempotency_key text,
  p_payload_hash text, p_max_queued integer)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  now_ms bigint := {{schema}}.now_ms();
  j {{schema}}.job;
BEGIN
  IF p_idem IS NOT NULL THEN
    SELECT * INTO j FROM {{schema}}.job WHERE idem = p_idem;
    IF FOUND THEN RETURN '{"created":false,"job":' || row_to_json(j)::text || '}'; END IF;
  END IF;
  IF p_max_queued IS NOT NULL THEN
    PERFORM pg_advisory_xact_lock(hashtext({{channel}} || ':max-queued'));
    IF (SELECT count(*) FROM {{schema}}.job WHERE status = 'queued') >= p_max_queued THEN
      RETURN NULL;
    END IF;
  END IF;
  INSERT INTO {{schema}}.job (id, task, payload, status, max_attempts, run_at, ord, created_at, expire_at,
    timeout_ms, owner, idem, idempotency_key, payload_hash)
  VALUES (p_id, p_task, p_payload, 'queued', p_max_attempts, coalesce(p_run_at, now_ms),
    nextval('{{schema}}.ord_seq'), now_ms, p_expire_at, p_timeout_ms, p_owner, p_idem, p_idempotency_key,
    p_payload_hash)
  ON CONFLICT (idem) WHERE idem IS NOT NULL DO NOTHING
  RETURNING * INTO j;
  IF NOT FOUND THEN
    -- A concurrent enqueue with the same key committed first: answer with its job.
    SELECT * INTO j FROM {{schema}}.job WHERE idem = p_idem;
    RETURN '{"created":false,"job":' || row_to_json(j)::text || '}';
  END IF;
  PERFORM {{schema}}.emit(j.id, 1, '"type":"status","status":"queued","attempts":0');
  PERFORM pg_notify({{channel}} || ':work', j.run_at::text);
  RETURN '{"created":true,"createdAt":' || now_ms || ',"runAt":' || j.run_at || '}';
END $$;

-- Claim up to p_limit due jobs of p_tasks, oldest first, each leased for p_lease_ms to this
-- caller alone (SKIP LOCKED: concurrent claims take different jobs, never wait). A job past its
-- age limit that never started is failed instead. Returns a JSON array of records (with their
-- lease token, without logs), then when the next delayed job comes due, as
-- {"leases":[...],"nextDue":ms|null}.
-- Record events (history rows, the last p_history kept per job) and queue their NOTIFYs, set-based:
-- one call for all the events of a settle. An event too large for a NOTIFY payload (8000 bytes)
-- is announced by reference; listeners read it from the history.
CREATE FUNCTION {{schema}}.publish(p_ids uuid[], p_seqs integer[], p_bodies text[], p_history integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  buf text := '';
  ev text;
  top integer;
  total bigint;
BEGIN
  IF coalesce(cardinality(p_ids), 0) = 0 THEN RETURN; END IF;
  INSERT INTO {{schema}}.event (job_id, seq, body) SELECT * FROM unnest(p_ids, p_seqs, p_bodies);
  -- As few NOTIFYs as fit: the events go as JSON arrays of up to about 7900 bytes. The usual
  -- settle (a few dozen status events) fits in one, joined at once; else they are packed one by one.
  SELECT max(s), sum(octet_length(b) + 1) INTO top, total FROM unnest(p_seqs, p_bodies) AS e(s, b);
  IF total <= 7890 THEN
    PERFORM pg_notify({{channel}} || ':events', '[' || array_to_string(p_bodies, ',') || ']');
  ELSE
    FOR i IN 1 .. cardinality(p_ids) LOOP
      ev := CASE WHEN octet_length(p_bodies[i]) > 7900
        THEN '{"jobId":"' || p_ids[i] || '","seq":' || p_seqs[i] || ',"ref":true}' ELSE p_bodies[i] END;
      IF buf <> '' AND octet_length(buf) + octet_length(ev) > 7890 THEN
        PERFORM pg_notify({{channel}} || ':events', '[' || buf || ']');
        buf := '';
      END IF;
      buf := buf || CASE WHEN buf = '' THEN '' ELSE ',' END || ev;
    END LOOP;
    PERFORM pg_notify({{channel}} || ':events', '[' || buf || ']');
  END IF;
  IF top > p_history THEN
    DELETE FROM {{schema}}.event e USING unnest(p_ids, p_seqs) AS n(id, seq)
    WHERE n.seq > p_history AND e.job_id = n.id AND e.seq <= n.seq - p_history;
  END IF;
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
-- now is claimable by it.
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
CREATE FUNCTION {{schema}}.settle(p_ids uuid[], p_tokens bigint[], p_outcomes text[], p_values text[],
  p_retry_at bigint[], p_tasks text[], p_limit integer, p_lease_ms bigint, p_history integer)
RETURNS text LANGUAGE plpgsql
SET enable_bitmapscan = off SET enable_seqscan = off SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
  now_ms bigint := {{schema}}.now_ms();
  accepted text;
  leases text;
  ev_ids uuid[];
  ev_seqs integer[];
  ev_bodies text[];
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
      SELECT * FROM unnest(p_ids, p_tokens, p_outcomes, p_values, p_retry_at)
        WITH ORDINALITY AS t(id, token, outcome, value, retry_at, n)
    ),
    -- The runs whose token is current (locked in one order: no deadlock with another settle),
    -- and what becomes of each.
    held AS (
      SELECT r.n, j.id, r.outcome, r.value, r.retry_at,
        CASE WHEN r.outcome = 'cancel' OR j.cancel_requested THEN 'canceled'
             WHEN r.outcome = 'complete' THEN 'succeeded'
             WHEN r.outcome = 'fail' AND r.retry_at IS NULL THEN 'failed'
             ELSE 'queued' END AS next_status
      FROM runs r JOIN {{schema}}.job j ON j.id = r.id
      WHERE j.status = 'running' AND j.token = r.token
      ORDER BY j.id
      FOR UPDATE OF j
    ),
    ended AS (
      UPDATE {{schema}}.job j SET
        status = h.next_status,
        seq = j.seq + 1,
        lease_until = NULL,
        finished_at = CASE WHEN h.next_status = 'queued' THEN NULL ELSE now_ms END,
        cancel_requested = false,
        result = CASE WHEN h.next_status = 'succeeded' THEN h.value END,
        error = CASE WHEN h.next_status = 'succeeded' THEN NULL
                     WHEN h.outcome = 'fail' AND h.next_status <> 'canceled' THEN h.value
                     ELSE j.error END,
        attempts = CASE WHEN h.outcome = 'release' AND h.next_status = 'queued' THEN j.attempts - 1 ELSE j.attempts END,
        run_at = CASE WHEN h.next_status = 'queued' THEN coalesce(h.retry_at, now_ms) ELSE j.run_at END,
        ord = CASE WHEN h.next_status = 'queued' THEN nextval('{{schema}}.ord_seq') ELSE j.ord END
      FROM held h
      WHERE j.id = h.id
      RETURNING j.id, j.seq, j.status, j.attempts, j.result, j.error, j.run_at
    )
    SELECT a.accepted, e.ids, e.seqs, e.bodies, e.woke INTO accepted, ev_ids, ev_seqs, ev_bodies, woke
    FROM (SELECT string_agg((h.id IS NOT NULL)::text, ',' ORDER BY r.n) AS accepted
          FROM runs r LEFT JOIN held h ON h.n = r.n) a,
         (SELECT array_agg(id) AS ids, array_agg(seq) AS seqs,
            array_agg('{"jobId":"' || id || '","seq":' || seq || ',"at":' || now_ms
              || ',"type":"status","status":"' || status || '","attempts":' || attempts
              || CASE WHEN status = 'queued' THEN '' ELSE ',"result":' || coalesce(result, 'null') END
              || ',"error":' || coalesce(error, 'null') || '}') AS bodies,
            min(run_at) FILTER (WHERE status = 'queued') AS woke
          FROM ended) e;
    IF woke IS NOT NULL THEN PERFORM pg_notify({{channel}} || ':work', woke::text); END IF;
  END IF;

  IF p_limit > 0 AND cardinality(p_tasks) > 0 THEN
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
      RETURNING j.id, j.seq, j.attempts, j.error
    ),
    picked AS (
      SELECT id FROM {{schema}}.job
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
      WHERE j.id = picked.id
      RETURNING j.*
    )
    SELECT (SELECT string_agg(row_to_json(c)::text, ',' ORDER BY c.run_at, c.ord)
            FROM claimed c),
      (SELECT count(*) FROM claimed), coalesce(ev_ids, '{}') || x.ids, coalesce(ev_seqs, '{}') || x.seqs,
      coalesce(ev_bodies, '{}') || x.bodies
    INTO leases, taken, ev_ids, ev_seqs, ev_bodies
    FROM (SELECT array_agg(id) AS ids, array_agg(seq) AS seqs, array_agg(body) AS bodies FROM (
            SELECT id, seq, '{"jobId":"' || id || '","seq":' || seq || ',"at":' || now_ms
              || ',"type":"status","status":"failed","attempts":' || attempts || ',"result":null,"error":' || error
              || '}' AS body
            FROM expired
            UNION ALL
            SELECT id, seq, '{"jobId":"' || id || '","seq":' || seq || ',"at":' || now_ms
              || ',"type":"status","status":"running","attempts":' || attempts || '}'
            FROM claimed) ev) x;
  END IF;
  -- One write of the events of both statements (ended runs first: a job's events in seq order).
  PERFORM {{schema}}.publish(ev_ids, ev_seqs, ev_bodies, p_history);
  IF taken < p_limit THEN
    SELECT min(run_at) INTO next_due FROM {{schema}}.job WHERE status = 'queued' AND run_at > now_ms;
  END IF;
  RETURN '{"accepted":[' || coalesce(accepted, '') || '],"leases":[' || coalesce(leases, '')
    || '],"nextDue":' || coalesce(next_due::text, 'null') || '}';
END $$;

-- Claim: settle() without runs.
CREATE FUNCTION {{schema}}.claim(p_tasks text[], p_limit integer, p_lease_ms bigint, p_history integer)
RETURNS text LANGUAGE sql AS $$
  SELECT {{schema}}.settle('{}', '{}', '{}', '{}', '{}', p_tasks, p_limit, p_lease_ms, p_history)
$$;

-- Renew a lease held with p_token. Returns NULL when the token is not current, else whether a
-- cancel was requested.
CREATE FUNCTION {{schema}}.renew(p_id uuid, p_token bigint, p_lease_ms bigint) RETURNS boolean
LANGUAGE sql AS $$
  UPDATE {{schema}}.job SET lease_until = {{schema}}.now_ms() + p_lease_ms
  WHERE id = p_id AND status = 'running' AND token = p_token
  RETURNING cancel_requested
$$;

-- Progress (last value wins) with its event. Holder only.
CREATE FUNCTION {{schema}}.progress(p_id uuid, p_token bigint, p_progress text, p_history integer)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  new_seq integer;
BEGIN
  UPDATE {{schema}}.job SET progress = p_progress, seq = seq + 1
  WHERE id = p_id AND status = 'running' AND token = p_token
  RETURNING seq INTO new_seq;
  IF NOT FOUND THEN RETURN false; END IF;
  PERFORM {{schema}}.emit(p_id, new_seq, '"type":"progress","progress":' || p_progress);
  IF new_seq > p_history THEN PERFORM {{schema}}.trim_history(p_id, new_seq, p_history); END IF;
  RETURN true;
END $$;

-- Append a log line, keeping the last p_limit. Holder only.
CREATE FUNCTION {{schema}}.append_log(p_id uuid, p_token bigint, p_line text, p_limit integer) RETURNS boolean
LANGUAGE sql AS $$
  WITH u AS (
    UPDATE {{schema}}.job
    SET logs = (logs || p_line)[greatest(1, cardinality(logs) + 2 - p_limit):]
    WHERE id = p_id AND status = 'running' AND token = p_token
    RETURNING 1
  )
  SELECT EXISTS (SELECT 1 FROM u)
$$;

-- Cancel: a queued job ends canceled at once; a running one is flagged and its worker told (a
-- cancel event, not kept in history, and a NOTIFY on the cancel channel). With p_check_owner,
-- the job's owner must be p_owner (NULL: a job without owner) or it is not found.
-- Returns {"outcome":...,"job":record|null}.
CREATE FUNCTION {{schema}}.cancel(p_id uuid, p_check_owner boolean, p_owner text, p_history integer) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  j {{schema}}.job;
  outcome text;
BEGIN
  SELECT * INTO j FROM {{schema}}.job WHERE id = p_id FOR UPDATE;
  IF NOT FOUND OR (p_check_owner AND j.owner IS DISTINCT FROM p_owner) THEN
    RETURN '{"outcome":"not-found","job":null}';
  END IF;
  IF j.status = 'queued' THEN
    PERFORM {{schema}}.finish(j, 'canceled', NULL, NULL, p_history);
    outcome := 'canceled';
  ELSIF j.status = 'running' THEN
    IF NOT j.cancel_requested THEN
      UPDATE {{schema}}.job SET cancel_requested = true WHERE id = p_id;
      PERFORM pg_notify({{channel}} || ':events',
        '{"jobId":"' || p_id || '","seq":' || j.seq || ',"type":"cancel","at":' || {{schema}}.now_ms() || '}');
      PERFORM pg_notify({{channel}} || ':cancel', p_id::text);
    END IF;
    outcome := 'requested';
  ELSE
    outcome := 'finished';
  END IF;
  SELECT * INTO j FROM {{schema}}.job WHERE id = p_id;
  RETURN '{"outcome":"' || outcome || '","job":' || row_to_json(j)::text || '}';
END $$;

-- Admin retry: a failed or canceled job runs again as new (attempts reset). Returns the record,
-- or NULL when the job is not failed or canceled.
CREATE FUNCTION {{schema}}.retry(p_id uuid, p_history integer) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  j {{schema}}.job;
BEGIN
  SELECT * INTO j FROM {{schema}}.job WHERE id = p_id AND status IN ('failed', 'canceled') FOR UPDATE;
  IF NOT FOUND THEN RETURN NULL; END IF;
  UPDATE {{schema}}.job SET cancel_requested = false, result = NULL, progress = NULL, started_at = NULL,
    finished_at = NULL, expire_at = NULL
  WHERE id = p_id;
  PERFORM {{schema}}.requeue(j, {{schema}}.now_ms(), NULL, 0, p_history);
  SELECT * INTO j FROM {{schema}}.job WHERE id = p_id;
  RETURN row_to_json(j)::text;
END $$;

-- Recover up to p_batch expired leases: back to the queue (attempt counted), failed when the
-- attempts are spent, canceled when a cancel was requested. SKIP LOCKED: many processes may run
-- it at once, each job is handled once. Returns how many it touched.
CREATE FUNCTION {{schema}}.recover(p_batch integer, p_history integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  j {{schema}}.job;
  n integer := 0;
  err text := '{"message":"The worker running the job stopped renewing its lease.","code":"ERR_OFFLOAD_LEASE_EXPIRED"}';
BEGIN
  FOR j IN
    SELECT * FROM {{schema}}.job WHERE status = 'running' AND lease_until <= {{schema}}.now_ms()
    ORDER BY lease_until LIMIT p_batch FOR UPDATE SKIP LOCKED
  LOOP
    n := n + 1;
    IF j.cancel_requested THEN
      PERFORM {{schema}}.finish(j, 'canceled', NULL, NULL, p_history);
    ELSIF j.attempts >= j.max_attempts THEN
      PERFORM {{schema}}.finish(j, 'failed', NULL, err, p_history);
    ELSE
      PERFORM {{schema}}.requeue(j, {{schema}}.now_ms(), err, j.attempts, p_history);
    END IF;
  END LOOP;
  RETURN n;
END $$;

-- Purge up to p_batch jobs that finished before p_before, with their history. Returns how many.
CREATE FUNCTION {{schema}}.purge(p_before bigint, p_batch integer) RETURNS integer LANGUAGE sql AS $$
  WITH gone AS (
    DELETE FROM {{schema}}.job WHERE id IN (
      SELECT id FROM {{schema}}.job
      WHERE finished_at < p_before AND status IN ('succeeded', 'failed', 'canceled')
      LIMIT p_batch FOR UPDATE SKIP LOCKED
    )
    RETURNING id
  ), events AS (
    DELETE FROM {{schema}}.event WHERE job_id IN (SELECT id FROM gone)
  )
  SELECT count(*)::integer FROM gone
$$;
