-- 003: job ids ordered by creation time; two indexes fewer on every change of a job.
--
-- No update of a job is HOT (its status is in the predicates of the partial indexes), so every
-- claim and every settle adds an entry to each index whose predicate the new row version meets.
-- job_created (all jobs) took one at both, job_finished one at each settle. Both go:
-- - A job's id is now a version 7 UUID made by enqueue() from the same server time as its
--   created_at (the first 48 bits are that millisecond, the rest random): ordering by id is
--   ordering by (created_at, id). Lists read the primary key backwards, or job_owner, now
--   (owner, id). Jobs enqueued before this migration have random ids: a list shows them in id
--   order until they are purged.
-- - purge() finds candidates through the primary key too: a job that finished before the cutoff
--   was created before it, so only ids below the cutoff's first id qualify (and the random ids of
--   earlier jobs, which lie in the future).

DROP INDEX {{schema}}.job_created;
DROP INDEX {{schema}}.job_finished;
DROP INDEX {{schema}}.job_owner;
CREATE INDEX job_owner ON {{schema}}.job (owner, id) WHERE owner IS NOT NULL;

-- The first id of millisecond p_ms: every id made at p_ms or later is at least this one.
CREATE FUNCTION {{schema}}.first_id(p_ms bigint) RETURNS uuid LANGUAGE sql IMMUTABLE AS $$
  SELECT (lpad(to_hex(p_ms), 12, '0') || '70008000000000000000')::uuid
$$;

-- A new job id for millisecond p_ms (RFC 9562 version 7): 48 bits of time, the version, and the
-- random bits (with the variant) of a version 4 UUID. One expression, no FROM: the planner inlines
-- it into enqueue's cached plan (a SQL function it cannot inline is planned again at every call).
CREATE FUNCTION {{schema}}.new_id(p_ms bigint) RETURNS uuid LANGUAGE sql VOLATILE AS $$
  SELECT (lpad(to_hex(p_ms), 12, '0') || '7' || substr(replace(gen_random_uuid()::text, '-', ''), 14))::uuid
$$;

-- Enqueue: a new queued job (seq 1) with a new id, or the job an idempotency key already names
-- (not created). With p_max_queued, refuse (NULL) when that many jobs are queued; the count is
-- taken under a transaction-level advisory lock so two enqueues cannot both take the last place.
-- p_id is kept for the signature and ignored: the id comes from the server's clock.
-- Returns {"created":true,"id":...,"createdAt":ms,"runAt":ms}, {"created":false,"job":record}, or
-- NULL when the queue is full.
CREATE OR REPLACE FUNCTION {{schema}}.enqueue(p_id uuid, p_task text, p_payload text, p_owner text,
  p_max_attempts integer, p_run_at bigint, p_expire_at bigint, p_timeout_ms integer, p_idem text,
  p_idempotency_key text, p_payload_hash text, p_max_queued integer)
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
  VALUES ({{schema}}.new_id(now_ms), p_task, p_payload, 'queued', p_max_attempts, coalesce(p_run_at, now_ms),
    nextval('{{schema}}.ord_seq'), now_ms, p_expire_at, p_timeout_ms, p_owner, p_idem, p_idempotency_key,
    p_payload_hash)
  ON CONFLICT (idem) WHERE idem IS NOT NULL DO NOTHING
  RETURNING * INTO j;
  IF NOT FOUND THEN
    -- A concurrent enqueue with the same key committed first: answer with its job.
    SELECT * INTO j FROM {{schema}}.job WHERE idem = p_idem;
    RETURN '{"created":false,"job":' || row_to_json(j)::text || '}';
  END IF;
  -- No NOTIFY here: PostgreSQL commits one notifying transaction at a time, its disk flush
  -- included, so enqueues that notified could not share a flush. The broker announces the new
  -- job right after the commit (announce_queued). No history row: history() reads a job's first
  -- event back from the job (its created_at).
  RETURN '{"created":true,"id":"' || j.id || '","createdAt":' || now_ms || ',"runAt":' || j.run_at || '}';
END $$;

-- Purge up to p_batch jobs that finished before p_before, with their history. Returns how many.
CREATE OR REPLACE FUNCTION {{schema}}.purge(p_before bigint, p_batch integer) RETURNS integer
LANGUAGE sql AS $$
  WITH gone AS (
    DELETE FROM {{schema}}.job WHERE id IN (
      SELECT id FROM {{schema}}.job
      WHERE (id < {{schema}}.first_id(p_before) OR id >= {{schema}}.first_id({{schema}}.now_ms() + 86400000))
        AND finished_at < p_before AND status IN ('succeeded', 'failed', 'canceled')
      LIMIT p_batch FOR UPDATE SKIP LOCKED
    )
    RETURNING id
  ), events AS (
    DELETE FROM {{schema}}.event WHERE job_id IN (SELECT id FROM gone)
  )
  SELECT count(*)::integer FROM gone
$$;

-- Announce jobs just enqueued (committed): their first event (seq 1, queued) and a wake-up for
-- the earliest run_at, in one transaction that commits without waiting for the disk (a lost
-- announcement costs a worker its poll interval, and an SSE client reads the job anyway).
CREATE FUNCTION {{schema}}.announce_queued(p_ids uuid[], p_created_at bigint[], p_run_at bigint[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  bodies text[];
BEGIN
  PERFORM set_config('synchronous_commit', 'off', true);
  SELECT array_agg({{schema}}.status_event(id, 1, created_at, 'queued', 0, NULL, NULL, false)) INTO bodies
  FROM unnest(p_ids, p_created_at) AS t(id, created_at);
  PERFORM {{schema}}.announce(p_ids, array_fill(1, ARRAY[cardinality(p_ids)]), bodies);
  PERFORM pg_notify({{channel}} || ':work', (SELECT min(r) FROM unnest(p_run_at) AS r)::text);
END $$;
