-- enqueue: persist a queued job (seq 1), or return the job an idempotency key already names.
-- ARGV: P, history, id, task, payload, owner key suffix, owner ('' when null), maxAttempts,
--       runAt ('' = now), expireAt (''), timeoutMs (''), idempotency hash (''), idempotencyKey,
--       payloadHash, maxQueued ('')
-- Returns {1, createdAt, runAt} created (the caller knows the rest), {0, record} replayed,
-- {-1} queue full.
local id, task, payload, owner_key, owner = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
-- Ids are fresh UUIDs: an existing one means this very command again (ioredis resends a command
-- whose reply a dropped connection lost). Persisting it twice would reset a job that already ran.
if redis.call('EXISTS', jkey(id)) == 1 then
  local v = redis.call('HMGET', jkey(id), 'createdAt', 'runAt')
  return { 1, v[1], v[2] }
end
local idem = ARGV[12]
if idem ~= '' then
  local existing = redis.call('GET', P .. ':i:' .. idem)
  if existing and redis.call('EXISTS', jkey(existing)) == 1 then return { 0, record(existing) } end
end
if ARGV[15] ~= '' then
  local queued = redis.call('ZCARD', P .. ':all') - redis.call('ZCARD', P .. ':run') - redis.call('ZCARD', P .. ':fin')
  if queued >= tonumber(ARGV[15]) then return { -1 } end
end
local run_at_s = ARGV[9] == '' and NOW_S or ARGV[9]
local run_at = tonumber(run_at_s)
local k = jkey(id)
local fields = { 'id', id, 'task', task, 'payload', payload, 'status', 'queued', 'attempts', '0',
  'maxAttempts', ARGV[8], 'runAt', run_at_s, 'createdAt', NOW_S, 'cancelRequested', '0', 'seq', '1',
  'ownerKey', owner_key }
local function add(name, value) fields[#fields + 1] = name; fields[#fields + 1] = value end
if owner_key ~= '~' then add('owner', owner) end
if ARGV[10] ~= '' then add('expireAt', ARGV[10]) end
if ARGV[11] ~= '' then add('timeoutMs', ARGV[11]) end
if ARGV[14] ~= '' then add('payloadHash', ARGV[14]) end
if idem ~= '' then
  add('idem', idem)
  add('idempotencyKey', ARGV[13])
  redis.call('SET', P .. ':i:' .. idem, id)
end
if run_at <= NOW then add('ord', NOW_US) end
redis.call('HSET', k, unpack(fields))
redis.call('ZADD', P .. ':all', NOW_S, id)
redis.call('ZADD', P .. ':o:' .. owner_key, NOW_S, id)
schedule(id, task, run_at)
event(id, '1', '"type":"status","status":"queued","attempts":0')
flush()
return { 1, NOW_S, run_at_s }
