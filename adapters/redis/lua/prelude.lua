-- Shared by every script (prepended once at load). Every key lives under the prefix P, which
-- carries the queue's hash tag ("offload:{jobs}"), so a script touches one Redis Cluster slot.
--   P:j:<id>  job hash          P:e:<id>  event history (list)   P:l:<id>  log lines (list)
--   P:r:<task> due job ids, FIFO (list)    P:d  not yet due (zset by runAt)
--   P:run  running (zset by lease end)     P:fin  finished (zset by finishedAt)
--   P:all  every job (zset by createdAt)   P:o:<owner>  one owner's jobs (zset by createdAt)
--   P:i:<hash>  idempotency key -> id      P:cnt  finished jobs per status (hash)
--   P:tok  lease token counter
--   channels P:events (job events: one JSON event, or a JSON array of them), P:work (wake-ups:
--   when the job comes due, ms) and P:cancel (the id of a running job whose cancel was asked)
-- Running jobs are the members of P:run, queued ones those of P:all in neither P:run nor P:fin.
-- ARGV[1] is P and ARGV[2] the history limit in every script; KEYS[1] is P:cnt (routing only).
--
-- Cost: a redis.call costs about as much as the command itself, and so does turning a number
-- into text. The scripts that run for every job (enqueue, claim, settle) read a job's hash once
-- and write it once; writes to the keys all jobs share (P:cnt, P:run, P:fin, the events
-- channel) are collected while a script runs and made once at its end, by flush(), so a claim
-- or a settle of many jobs costs little more per job than the hash writes.
local P = ARGV[1]
local HISTORY = tonumber(ARGV[2])

-- The server's clock: ms for job times (NOW, and NOW_S as text, made once), µs for `ord` (when a
-- job became due: the order of claims across tasks). Numbers past 14 digits go to redis.call as
-- numbers, never through `..` (which keeps 14 significant digits).
local NOW, NOW_S, NOW_US
do
  local t = redis.call('TIME')
  NOW_S = t[1] .. string.sub(string.format('%06d', tonumber(t[2])), 1, 3)
  NOW = tonumber(NOW_S)
  NOW_US = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function jkey(id) return P .. ':j:' .. id end

-- Collected writes (see flush).
local finished = {}      -- status -> jobs that ended so (P:cnt)
local run_del, run_add, fin_del, fin_add = {}, {}, {}, {}
local published = {}     -- events for P:events
local woken = nil        -- earliest due time to publish on P:work

-- A variadic command over a long list, in chunks (Lua's unpack has a limit).
local function variadic(cmd, key, args)
  for i = 1, #args, 1000 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 999, #args)))
  end
end

-- A job left status `from` for `to`: only finished statuses are counted in P:cnt.
local function count(from, to)
  if from == 'succeeded' or from == 'failed' or from == 'canceled' then finished[from] = (finished[from] or 0) - 1 end
  if to == 'succeeded' or to == 'failed' or to == 'canceled' then finished[to] = (finished[to] or 0) + 1 end
end

local function wake(run_at)
  if not woken or run_at < woken then woken = run_at end
end

-- Make the collected writes. Every script that changes a job calls it last.
local function flush()
  for status, n in pairs(finished) do
    if n ~= 0 then redis.call('HINCRBY', P .. ':cnt', status, n) end
  end
  -- Removals first: a job re-queued and claimed again in one script leaves P:run, then re-enters.
  if #run_del > 0 then variadic('ZREM', P .. ':run', run_del) end
  if #run_add > 0 then variadic('ZADD', P .. ':run', run_add) end
  if #fin_del > 0 then variadic('ZREM', P .. ':fin', fin_del) end
  if #fin_add > 0 then variadic('ZADD', P .. ':fin', fin_add) end
  if #published == 1 then
    redis.call('PUBLISH', P .. ':events', published[1])
  elseif #published > 1 then
    redis.call('PUBLISH', P .. ':events', '[' .. table.concat(published, ',') .. ']')
  end
  if woken then redis.call('PUBLISH', P .. ':work', woken) end
end

-- Append an event to the job's history; it is published at flush(). The caller stored `seq` in
-- the hash. `body` is the JSON members after jobId, seq and at; JSON values in it (result,
-- error, progress) are stored text, never re-encoded.
local function event(id, seq, body)
  local e = '{"jobId":"' .. id .. '","seq":' .. seq .. ',"at":' .. NOW_S .. ',' .. body .. '}'
  local history = P .. ':e:' .. id
  if redis.call('RPUSH', history, e) > HISTORY then redis.call('LTRIM', history, -HISTORY, -1) end
  published[#published + 1] = e
end

local function held(id, token)
  local v = redis.call('HMGET', jkey(id), 'status', 'token')
  return v[1] == 'running' and v[2] == token
end

-- Onto its task's ready list if due, else into P:d; workers are told either way. A job put on
-- a ready list must have its `ord` stored by the caller.
local function schedule(id, task, run_at)
  if run_at <= NOW then
    redis.call('RPUSH', P .. ':r:' .. task, id)
  else
    redis.call('ZADD', P .. ':d', run_at, id)
  end
  wake(run_at)
end

-- A job record: these fields in this order (RedisBroker's toRecord reads them by position; a
-- missing one is nil), then, from record(), its log lines as a JSON array. `spec` is the JSON
-- of what never changes after enqueue (id, task, payload, maxAttempts, timeoutMs, owner,
-- idempotencyKey, payloadHash), made by the client: one field to read instead of eight (a
-- field read costs about a microsecond; a claim reads every job it hands out).
local RECORD = { 'spec', 'status', 'progress', 'result', 'error', 'attempts', 'runAt', 'createdAt',
  'startedAt', 'finishedAt', 'expireAt', 'cancelRequested', 'seq' }
local R_STATUS, R_ERROR, R_ATTEMPTS, R_RUN_AT, R_STARTED_AT, R_EXPIRE_AT, R_SEQ = 2, 5, 6, 7, 9, 11, 13

local function read(id) return redis.call('HMGET', jkey(id), unpack(RECORD)) end

local function record(id)
  local v = read(id)
  local logs = redis.call('LRANGE', P .. ':l:' .. id, 0, -1)
  v[#RECORD + 1] = #logs == 0 and '[]' or cjson.encode(logs)
  return v
end

-- End the job. `cur` is its status, attempts, error and seq, when the caller read them already.
local function finish(id, status, result, err, cur)
  local k = jkey(id)
  cur = cur or redis.call('HMGET', k, 'status', 'attempts', 'error', 'seq')
  local from, seq = cur[1], tonumber(cur[4]) + 1
  count(from, status)
  local fields = { 'status', status, 'finishedAt', NOW_S, 'cancelRequested', '0', 'seq', seq }
  if result then fields[#fields + 1] = 'result'; fields[#fields + 1] = result end
  if err then fields[#fields + 1] = 'error'; fields[#fields + 1] = err end
  -- The lease token stays: with the status no longer 'running', no write of that run is held.
  redis.call('HSET', k, unpack(fields))
  if from == 'running' then run_del[#run_del + 1] = id end
  fin_add[#fin_add + 1] = NOW_S
  fin_add[#fin_add + 1] = id
  local r, e = 'null', err or cur[3] or 'null'
  if status == 'succeeded' then r, e = result, 'null' end
  event(id, seq, '"type":"status","status":"' .. status .. '","attempts":' .. cur[2] .. ',"result":' .. r .. ',"error":' .. e)
end

-- Back to queued (retry, lost lease, release, admin retry): `err` is the job's error from now on
-- ('null' clears it).
local function requeue(id, run_at, err)
  local k = jkey(id)
  local v = redis.call('HMGET', k, 'status', 'task', 'attempts', 'seq')
  local seq = tonumber(v[4]) + 1
  count(v[1], 'queued')
  local fields = { 'status', 'queued', 'runAt', run_at, 'seq', seq, 'ord', NOW_US }
  if err ~= 'null' then fields[#fields + 1] = 'error'; fields[#fields + 1] = err end
  redis.call('HSET', k, unpack(fields))
  if err == 'null' then redis.call('HDEL', k, 'error') end
  if v[1] == 'running' then run_del[#run_del + 1] = id else fin_del[#fin_del + 1] = id end
  schedule(id, v[2], run_at)
  event(id, seq, '"type":"status","status":"queued","attempts":' .. v[3] .. ',"error":' .. err)
end
