-- Shared by every script (prepended once at load). Every key lives under the prefix P, which
-- carries the queue's hash tag ("offload:{jobs}"), so a script touches one Redis Cluster slot.
--   P:j:<id>  job hash          P:e:<id>  event history (list)   P:l:<id>  log lines (list)
--   P:r:<task> due job ids, FIFO (list)    P:d  not yet due (zset by runAt)
--   P:run  running (zset by lease end)     P:fin  finished (zset by finishedAt)
--   P:all  every job (zset by createdAt)   P:o:<owner>  one owner's jobs (zset by createdAt)
--   P:i:<hash>  idempotency key -> id      P:cnt  jobs per status, but running (hash)
--   P:tok  lease token counter
--   channels P:events (job events: one JSON event, or a JSON array of them), P:work (wake-ups:
--   when the job comes due, ms) and P:cancel (the id of a running job whose cancel was asked)
-- ARGV[1] is P and ARGV[2] the history limit in every script; KEYS[1] is P:cnt (routing only).
--
-- Every redis.call costs about a microsecond on top of the command itself, more than most
-- commands here: the scripts that run for every job (enqueue, claim, settle) read a hash once,
-- write it once, and batch what they can across the jobs of one claim.
local P = ARGV[1]
local HISTORY = tonumber(ARGV[2])

-- The server's clock: ms for job times, µs for `ord` (when a job became due: the order of
-- claims across tasks). Numbers past 14 digits go to redis.call as numbers, never through `..`.
-- NOW_S is NOW as text, made once: turning a number into text costs about as much as a command.
local NOW, NOW_S, NOW_US
do
  local t = redis.call('TIME')
  NOW_S = t[1] .. string.sub(string.format('%06d', tonumber(t[2])), 1, 3)
  NOW = tonumber(NOW_S)
  NOW_US = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function jkey(id) return P .. ':j:' .. id end

-- Running jobs are not counted in P:cnt: they are exactly the members of P:run.
local function count(from, to, n)
  n = n or 1
  if from and from ~= 'running' then redis.call('HINCRBY', P .. ':cnt', from, -n) end
  if to and to ~= 'running' then redis.call('HINCRBY', P .. ':cnt', to, n) end
end

-- Append an event to the job's history and return it for publish(). The caller stored `seq` in
-- the hash. `body` is the JSON members after jobId, seq and at; JSON values in it (result,
-- error, progress) are stored text, never re-encoded.
local function event(id, seq, body)
  local e = '{"jobId":"' .. id .. '","seq":' .. seq .. ',"at":' .. NOW_S .. ',' .. body .. '}'
  local history = P .. ':e:' .. id
  if redis.call('RPUSH', history, e) > HISTORY then redis.call('LTRIM', history, -HISTORY, -1) end
  return e
end

-- One message for the events of one script run (a claim's jobs go together).
local function publish(events)
  if #events == 1 then
    redis.call('PUBLISH', P .. ':events', events[1])
  elseif #events > 1 then
    redis.call('PUBLISH', P .. ':events', '[' .. table.concat(events, ',') .. ']')
  end
end

local function held(id, token)
  local v = redis.call('HMGET', jkey(id), 'status', 'token')
  return v[1] == 'running' and v[2] == token
end

-- Onto its task's ready list if due, else into P:d. A job put on a ready list must have its
-- `ord` stored by the caller.
local function schedule(id, task, run_at)
  if run_at <= NOW then
    redis.call('RPUSH', P .. ':r:' .. task, id)
  else
    redis.call('ZADD', P .. ':d', run_at, id)
  end
end

-- A job record: these fields in this order (RedisBroker's RECORD_FIELDS reads them by position;
-- a missing one is nil), then, from record(), its log lines as a JSON array.
local RECORD = { 'id', 'task', 'payload', 'status', 'progress', 'result', 'error', 'attempts',
  'maxAttempts', 'runAt', 'createdAt', 'startedAt', 'finishedAt', 'expireAt', 'timeoutMs', 'owner',
  'idempotencyKey', 'payloadHash', 'cancelRequested', 'seq' }
local R_STATUS, R_ERROR, R_ATTEMPTS, R_RUN_AT, R_STARTED_AT, R_EXPIRE_AT, R_SEQ = 4, 7, 8, 10, 12, 14, 20

local function read(id) return redis.call('HMGET', jkey(id), unpack(RECORD)) end

local function record(id)
  local v = read(id)
  local logs = redis.call('LRANGE', P .. ':l:' .. id, 0, -1)
  v[#RECORD + 1] = #logs == 0 and '[]' or cjson.encode(logs)
  return v
end

-- End the job. `cur` is its status, attempts, error and seq, when the caller read them already.
-- Returns the event for publish().
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
  if from == 'running' then redis.call('ZREM', P .. ':run', id) end
  redis.call('ZADD', P .. ':fin', NOW_S, id)
  local r, e = 'null', err or cur[3] or 'null'
  if status == 'succeeded' then r, e = result, 'null' end
  return event(id, seq, '"type":"status","status":"' .. status .. '","attempts":' .. cur[2] .. ',"result":' .. r .. ',"error":' .. e)
end

-- Back to queued (retry, lost lease, release, admin retry): `err` is the job's error from now on
-- ('null' clears it). Publishes the event and the wake-up.
local function requeue(id, run_at, err)
  local k = jkey(id)
  local v = redis.call('HMGET', k, 'status', 'task', 'attempts', 'seq')
  local seq = tonumber(v[4]) + 1
  count(v[1], 'queued')
  local fields = { 'status', 'queued', 'runAt', run_at, 'seq', seq, 'ord', NOW_US }
  if err ~= 'null' then fields[#fields + 1] = 'error'; fields[#fields + 1] = err end
  redis.call('HSET', k, unpack(fields))
  if err == 'null' then redis.call('HDEL', k, 'error') end
  if v[1] == 'running' then redis.call('ZREM', P .. ':run', id) else redis.call('ZREM', P .. ':fin', id) end
  schedule(id, v[2], run_at)
  publish({ event(id, seq, '"type":"status","status":"queued","attempts":' .. v[3] .. ',"error":' .. err) })
  redis.call('PUBLISH', P .. ':work', run_at)
end

local function due_now(status, run_at) return status == 'queued' and tonumber(run_at) <= NOW end

-- Lease up to `limit` due jobs of the tasks ARGV[first_task..], oldest first, for `lease_ms`;
-- fail those past their age limit that never started. Appends token, record (without logs) for
-- each to `out`, and their events to `events`. Returns how many it leased and when the next delayed job comes
-- due ('' when none, or when the limit was reached: the caller comes back anyway).
local function claim_due(limit, lease_ms, first_task, out, events)
  if limit < 1 then return 0, '' end
  local lease_until = NOW + lease_ms

  -- Promote what came due, in the order it came due.
  local due = redis.call('ZRANGEBYSCORE', P .. ':d', '-inf', NOW, 'LIMIT', 0, 1000)
  if #due > 0 then
    redis.call('ZREM', P .. ':d', unpack(due))
    for _, id in ipairs(due) do
      local v = redis.call('HMGET', jkey(id), 'status', 'runAt', 'task')
      -- Stale entries (canceled, or re-scheduled since) are dropped.
      if due_now(v[1], v[2]) then
        redis.call('HSET', jkey(id), 'ord', tonumber(v[2]) * 1000)
        redis.call('RPUSH', P .. ':r:' .. v[3], id)
      end
    end
  end

  -- take(): the next job to hand out, popped from its ready list, with its record (read());
  -- nil when none. Entries whose job is no longer queued (canceled, claimed again after a
  -- requeue) are dropped.
  local take
  if #ARGV == first_task then
    local list = P .. ':r:' .. ARGV[first_task]
    take = function()
      while true do
        local id = redis.call('LPOP', list)
        if not id then return nil end
        local v = read(id)
        if due_now(v[R_STATUS], v[R_RUN_AT]) then return id, v end
      end
    end
  else
    -- Several tasks: the oldest of their heads. A head is peeked once and kept until taken.
    local heads = {}
    local function peek(list)
      while true do
        local id = redis.call('LINDEX', list, 0)
        if not id then return false end
        local v = redis.call('HMGET', jkey(id), 'status', 'runAt', 'ord')
        if due_now(v[1], v[2]) then return { id, tonumber(v[3]) } end
        redis.call('LPOP', list)
      end
    end
    take = function()
      local best, best_list
      for i = first_task, #ARGV do
        local list = P .. ':r:' .. ARGV[i]
        if heads[list] == nil then heads[list] = peek(list) end
        local head = heads[list]
        if head and (not best or head[2] < best[2]) then best, best_list = head, list end
      end
      if not best then return nil end
      redis.call('LPOP', best_list)
      heads[best_list] = nil
      return best[1], read(best[1])
    end
  end

  local running = {}
  local taken = 0
  local token_base
  while taken < limit do
    local id, v = take()
    if not id then break end
    if v[R_EXPIRE_AT] and not v[R_STARTED_AT] and tonumber(v[R_EXPIRE_AT]) <= NOW then
      events[#events + 1] = finish(id, 'failed', nil,
        '{"message":"The job was not started before its age limit.","code":"ERR_OFFLOAD_EXPIRED"}',
        { v[R_STATUS], v[R_ATTEMPTS], v[R_ERROR], v[R_SEQ] })
    else
      taken = taken + 1
      -- One counter step per claim, however many jobs it leases.
      token_base = token_base or redis.call('INCR', P .. ':tok')
      local token = token_base .. '.' .. taken
      local attempts, seq = tonumber(v[R_ATTEMPTS]) + 1, tonumber(v[R_SEQ]) + 1
      redis.call('HSET', jkey(id), 'status', 'running', 'startedAt', NOW_S, 'token', token,
        'leaseUntil', lease_until, 'attempts', attempts, 'seq', seq)
      running[#running + 1] = lease_until
      running[#running + 1] = id
      events[#events + 1] = event(id, seq, '"type":"status","status":"running","attempts":' .. attempts)
      v[R_STATUS], v[R_STARTED_AT], v[R_ATTEMPTS], v[R_SEQ] = 'running', NOW_S, attempts, seq
      out[#out + 1] = token
      out[#out + 1] = v
    end
  end
  if taken > 0 then
    count('queued', nil, taken)
    redis.call('ZADD', P .. ':run', unpack(running))
  end
  if taken == limit then return taken, '' end
  local next_due = redis.call('ZRANGE', P .. ':d', 0, 0, 'WITHSCORES')
  return taken, next_due[2] or ''
end
