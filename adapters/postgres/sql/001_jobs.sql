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

CREATE SEQUENCE {{schema}}.ord_seq;
CREATE SEQUENCE {{schema}}.token_seq;

-- Claim: due jobs, oldest first.
CREATE INDEX job_ready ON {{schema}}.job (run_at, ord) WHERE status = 'queued';
-- Recovery: running jobs by lease end.
CREATE INDEX job_running ON {{schema}}.job (lease_until) WHERE status = 'running';
-- Purge: finished jobs by end time.
CREATE INDEX job_finished ON {{schema}}.job (finished_at) WHERE finished_at IS NOT NULL;
-- Listing, newest first, all or one owner's.
CREATE INDEX job_created ON {{schema}}.job (created_at DESC, id DESC);
CREATE INDEX job_owner ON {{schema}}.job (owner, created_at DESC, id DESC);
-- Idempotency keys: one job per (owner, task, key), hashed by the client.
CREATE UNIQUE INDEX job_idem ON {{schema}}.job (idem) WHERE idem IS NOT NULL;

CREATE TABLE {{schema}}.event (
  job_id uuid NOT NULL,
  seq integer NOT NULL,
  body text NOT NULL,
  PRIMARY KEY (job_id, seq)
);

-- The database server's clock in ms (the transaction's start: one time per call).
CREATE FUNCTION {{schema}}.now_ms() RETURNS bigint LANGUAGE sql STABLE AS $$
  SELECT (extract(epoch FROM now()) * 1000)::bigint
$$;

-- A job as the broker hands it out: camelCase JSON text members, JSON values inlined as stored.
CREATE FUNCTION {{schema}}.job_json(j {{schema}}.job, with_logs boolean) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT '{"id":"' || j.id || '","task":' || to_json(j.task) || ',"payload":' || j.payload
    || ',"status":"' || j.status || '","progress":' || coalesce(j.progress, 'null')
    || ',"result":' || coalesce(j.result, 'null') || ',"error":' || coalesce(j.error, 'null')
    || ',"attempts":' || j.attempts || ',"maxAttempts":' || j.max_attempts
    || ',"runAt":' || j.run_at || ',"createdAt":' || j.created_at
    || ',"startedAt":' || coalesce(j.started_at::text, 'null')
    || ',"finishedAt":' || coalesce(j.finished_at::text, 'null')
    || ',"expireAt":' || coalesce(j.expire_at::text, 'null')
    || ',"timeoutMs":' || coalesce(j.timeout_ms::text, 'null')
    || ',"owner":' || coalesce(to_json(j.owner)::text, 'null')
    || ',"idempotencyKey":' || coalesce(to_json(j.idempotency_key)::text, 'null')
    || ',"payloadHash":' || coalesce(to_json(j.payload_hash)::text, 'null')
    || ',"cancelRequested":' || j.cancel_requested
    || ',"seq":' || j.seq
    || ',"token":' || coalesce('"' || j.token || '"', 'null')
    || ',"logs":' || CASE WHEN with_logs THEN to_json(j.logs)::text ELSE '[]' END || '}'
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
    IF FOUND THEN RETURN '{"created":false,"job":' || {{schema}}.job_json(j, true) || '}'; END IF;
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
    RETURN '{"created":false,"job":' || {{schema}}.job_json(j, true) || '}';
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
-- The planner settings: take due jobs by walking job_ready in order, never by reading every due
-- job and sorting them. Without fresh statistics (a new table, a burst) the planner thinks the
-- queue is tiny and picks that bitmap scan and sort, whose cost grows with the backlog.
CREATE FUNCTION {{schema}}.claim(p_tasks text[], p_limit integer, p_lease_ms bigint, p_history integer)
RETURNS text LANGUAGE plpgsql
SET enable_bitmapscan = off SET enable_seqscan = off SET enable_sort = off
AS $$
DECLARE
  now_ms bigint := {{schema}}.now_ms();
  j {{schema}}.job;
  out text := '';
  taken integer := 0;
  found_any boolean;
  next_due bigint;
BEGIN
  WHILE taken < p_limit AND cardinality(p_tasks) > 0 LOOP
    -- Jobs past their age limit are failed and do not count: look again until p_limit are
    -- leased or none is due.
    found_any := false;
    FOR j IN
      SELECT * FROM {{schema}}.job
      WHERE status = 'queued' AND run_at <= now_ms AND task = ANY (p_tasks)
      ORDER BY run_at, ord
      LIMIT p_limit - taken
      FOR UPDATE SKIP LOCKED
    LOOP
      found_any := true;
      IF j.expire_at IS NOT NULL AND j.started_at IS NULL AND j.expire_at <= now_ms THEN
        PERFORM {{schema}}.finish(j, 'failed', NULL,
          '{"message":"The job was not started before its age limit.","code":"ERR_OFFLOAD_EXPIRED"}', p_history);
        CONTINUE;
      END IF;
      UPDATE {{schema}}.job SET status = 'running', attempts = attempts + 1, started_at = now_ms,
        token = nextval('{{schema}}.token_seq'), lease_until = now_ms + p_lease_ms, seq = seq + 1
      WHERE id = j.id
      RETURNING * INTO j;
      PERFORM {{schema}}.emit(j.id, j.seq, '"type":"status","status":"running","attempts":' || j.attempts);
      IF j.seq > p_history THEN PERFORM {{schema}}.trim_history(j.id, j.seq, p_history); END IF;
      out := out || CASE WHEN taken > 0 THEN ',' ELSE '' END || {{schema}}.job_json(j, false);
      taken := taken + 1;
    END LOOP;
    EXIT WHEN NOT found_any;
  END LOOP;
  IF taken < p_limit THEN
    SELECT min(run_at) INTO next_due FROM {{schema}}.job WHERE status = 'queued' AND run_at > now_ms;
  END IF;
  RETURN '{"leases":[' || out || '],"nextDue":' || coalesce(next_due::text, 'null') || '}';
END $$;

-- Settle: end runs, each only if p_tokens[i] is its current lease (a requested cancel wins over
-- any outcome), then claim as claim() does for the slots they free. p_outcomes: 'complete'
-- (p_values = result), 'fail' (p_values = error; p_retry_at NULL = final), 'cancel', 'release'
-- (back to the queue at once, the attempt not counted). Returns claim()'s JSON with
-- "accepted":[bool...] added.
CREATE FUNCTION {{schema}}.settle(p_ids uuid[], p_tokens bigint[], p_outcomes text[], p_values text[],
  p_retry_at bigint[], p_tasks text[], p_limit integer, p_lease_ms bigint, p_history integer)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  j {{schema}}.job;
  accepted text := '';
  ok boolean;
  claimed text;
BEGIN
  -- Lock the rows in one order, so two settles that share a job (a stale worker's and the
  -- current holder's) cannot deadlock.
  PERFORM 1 FROM {{schema}}.job WHERE id = ANY (p_ids) ORDER BY id FOR UPDATE;
  FOR i IN 1 .. coalesce(cardinality(p_ids), 0) LOOP
    SELECT * INTO j FROM {{schema}}.job WHERE id = p_ids[i] FOR UPDATE;
    ok := FOUND AND j.status = 'running' AND coalesce(j.token = p_tokens[i], false);
    accepted := accepted || CASE WHEN i > 1 THEN ',' ELSE '' END || ok;
    CONTINUE WHEN NOT ok;
    IF p_outcomes[i] = 'cancel' OR j.cancel_requested THEN
      PERFORM {{schema}}.finish(j, 'canceled', NULL, NULL, p_history);
    ELSIF p_outcomes[i] = 'complete' THEN
      PERFORM {{schema}}.finish(j, 'succeeded', p_values[i], NULL, p_history);
    ELSIF p_outcomes[i] = 'fail' AND p_retry_at[i] IS NULL THEN
      PERFORM {{schema}}.finish(j, 'failed', NULL, p_values[i], p_history);
    ELSIF p_outcomes[i] = 'fail' THEN
      PERFORM {{schema}}.requeue(j, p_retry_at[i], p_values[i], j.attempts, p_history);
    ELSE
      PERFORM {{schema}}.requeue(j, {{schema}}.now_ms(), j.error, j.attempts - 1, p_history);
    END IF;
  END LOOP;
  claimed := {{schema}}.claim(p_tasks, p_limit, p_lease_ms, p_history);
  RETURN '{"accepted":[' || accepted || '],' || substr(claimed, 2);
END $$;

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
  RETURN '{"outcome":"' || outcome || '","job":' || {{schema}}.job_json(j, true) || '}';
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
  RETURN {{schema}}.job_json(j, true);
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
