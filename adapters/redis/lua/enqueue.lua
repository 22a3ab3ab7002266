-- enqueue: persist a queued job (seq 1), or return the job an idempotency key already names.
-- ARGV: P, history, id, task, spec (see RECORD), owner key suffix, runAt ('' = now),
--       expireAt (''), idempotency hash (''), maxQueued ('')
-- Returns {1, createdAt, runAt} created (the caller knows the rest), {0, record} replayed,
-- {-1} queue full.
local id, task, spec, owner_key = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
-- Ids are fresh UUIDs: an existing one means this very command again (ioredis resends a command
-- whose reply a dropped connection lost). Persisting it twice would reset a job that already ran.
if redis.call('EXISTS', jkey(id)) == 1 then
  local v = redis.call('HMGET', jkey(id), 'createdAt', 'runAt')
  return { 1, v[1], v[2] }
end
local idem = ARGV[9]
if idem ~= '' then
  local existing = redis.call('GET', P .. ':i:' .. idem)
  if existing and redis.call('EXISTS', jkey(existing)) == 1 then return { 0, record(existing) } end
end
if ARGV[10] ~= '' then
  local queued = redis.call('ZCARD', P .. ':all') - redis.call('ZCARD', P .. ':run') - redis.call('ZCARD', P .. ':fin')
  if queued >= tonumber(ARGV[10]) then return { -1 } end
end
local run_at_s = ARGV[7] == '' and NOW_S or ARGV[7]
local run_at = tonumber(run_at_s)
-- `task` is kept apart from the spec as well: scripts read it (ready lists, list filters).
local fields = { 'spec', spec, 'task', task, 'status', 'queued', 'attempts', '0', 'runAt', run_at_s,
  'createdAt', NOW_S, 'cancelRequested', '0', 'seq', '1', 'ownerKey', owner_key }
local function add(name, value) fields[#fields + 1] = name; fields[#fields + 1] = value end
if ARGV[8] ~= '' then add('expireAt', ARGV[8]) end
if idem ~= '' then
  add('idem', idem)
  redis.call('SET', P .. ':i:' .. idem, id)
end
if run_at <= NOW then add('ord', NOW_US) end
redis.call('HSET', jkey(id), unpack(fields))
redis.call('ZADD', P .. ':all', NOW_S, id)
redis.call('ZADD', P .. ':o:' .. owner_key, NOW_S, id)
schedule(id, task, run_at)
event(id, '1', '"type":"status","status":"queued","attempts":0')
flush()
return { 1, NOW_S, run_at_s }
