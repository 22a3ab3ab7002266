-- Shared by every script (prepended once at load). Every key lives under the prefix P, which
-- carries the queue's hash tag ("offload:{jobs}"), so a script touches one Redis Cluster slot.
--   P:j:<id>  job hash          P:e:<id>  event history (list)   P:l:<id>  log lines (list)
--   P:r:<task> due job ids, FIFO (list)    P:d  not yet due (zset by runAt)
--   P:run  running (zset by lease end)     P:fin  finished (zset by finishedAt)
--   P:all  every job (zset by createdAt)   P:o:<owner>  one owner's jobs (zset by createdAt)
--   P:i:<hash>  idempotency key -> id      P:cnt  jobs per status (hash)
--   P:ord  ready-order counter             P:tok  lease token counter
--   channels P:events (job events, JSON) and P:work (wake-ups: when the job comes due, ms)
-- ARGV[1] is P and ARGV[2] the history limit in every script; KEYS[1] is P:cnt (routing only).
local P = ARGV[1]
local HISTORY = tonumber(ARGV[2])

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function jkey(id) return P .. ':j:' .. id end

local function count(from, to)
  if from then redis.call('HINCRBY', P .. ':cnt', from, -1) end
  if to then redis.call('HINCRBY', P .. ':cnt', to, 1) end
end

-- Append an event to the job's history and publish it. `body` is the JSON members after
-- jobId, seq and at; JSON values in it (result, error, progress) are stored text, never re-encoded.
local function emit(id, body, now)
  local seq = redis.call('HINCRBY', jkey(id), 'seq', 1)
  local event = '{"jobId":"' .. id .. '","seq":' .. seq .. ',"at":' .. now .. ',' .. body .. '}'
  local history = P .. ':e:' .. id
  if redis.call('RPUSH', history, event) > HISTORY then redis.call('LTRIM', history, -HISTORY, -1) end
  redis.call('PUBLISH', P .. ':events', event)
end

local function held(id, token)
  local v = redis.call('HMGET', jkey(id), 'status', 'token')
  return v[1] == 'running' and v[2] == token
end

local function make_ready(id, task)
  redis.call('HSET', jkey(id), 'ord', redis.call('INCR', P .. ':ord'))
  redis.call('RPUSH', P .. ':r:' .. task, id)
end

local function schedule(id, task, run_at, now)
  if run_at <= now then make_ready(id, task) else redis.call('ZADD', P .. ':d', run_at, id) end
end

-- The job as HGETALL pairs, its log lines appended as a "logs" field (a JSON array).
local function record(id)
  local fields = redis.call('HGETALL', jkey(id))
  local logs = redis.call('LRANGE', P .. ':l:' .. id, 0, -1)
  fields[#fields + 1] = 'logs'
  fields[#fields + 1] = #logs == 0 and '[]' or cjson.encode(logs)
  return fields
end

local function finish(id, status, now, result, err)
  local k = jkey(id)
  -- One read and one write of the hash: this runs for every job that ends.
  local v = redis.call('HMGET', k, 'status', 'attempts', 'result', 'error')
  count(v[1], status)
  local fields = { 'status', status, 'finishedAt', now, 'cancelRequested', '0' }
  if result then fields[#fields + 1] = 'result'; fields[#fields + 1] = result end
  if err then fields[#fields + 1] = 'error'; fields[#fields + 1] = err end
  redis.call('HSET', k, unpack(fields))
  redis.call('HDEL', k, 'token', 'leaseUntil')
  redis.call('ZREM', P .. ':run', id)
  redis.call('ZADD', P .. ':fin', now, id)
  local r, e = 'null', err or v[4] or 'null'
  if status == 'succeeded' then r, e = result or v[3] or 'null', 'null' end
  emit(id, '"type":"status","status":"' .. status .. '","attempts":' .. v[2] .. ',"result":' .. r .. ',"error":' .. e, now)
end

-- Back to queued (retry, lost lease, release): `err` is the job's error from now on ('null' clears it).
local function requeue(id, run_at, err, now)
  local k = jkey(id)
  count(redis.call('HGET', k, 'status'), 'queued')
  redis.call('HSET', k, 'status', 'queued', 'runAt', run_at)
  redis.call('HDEL', k, 'token', 'leaseUntil')
  if err == 'null' then redis.call('HDEL', k, 'error') else redis.call('HSET', k, 'error', err) end
  redis.call('ZREM', P .. ':run', id)
  redis.call('ZREM', P .. ':fin', id)
  schedule(id, redis.call('HGET', k, 'task'), run_at, now)
  emit(id, '"type":"status","status":"queued","attempts":' .. redis.call('HGET', k, 'attempts') .. ',"error":' .. err, now)
  redis.call('PUBLISH', P .. ':work', run_at)
end
