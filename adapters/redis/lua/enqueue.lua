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
if ARGV[15] ~= '' and tonumber(redis.call('HGET', P .. ':cnt', 'queued') or '0') >= tonumber(ARGV[15]) then
  return { -1 }
end
local now = now_ms()
local run_at = ARGV[9] == '' and now or tonumber(ARGV[9])
local k = jkey(id)
redis.call('HSET', k, 'id', id, 'task', task, 'payload', payload, 'status', 'queued', 'attempts', 0,
  'maxAttempts', ARGV[8], 'runAt', run_at, 'createdAt', now, 'cancelRequested', '0', 'seq', 0,
  'ownerKey', owner_key)
if owner_key ~= '~' then redis.call('HSET', k, 'owner', owner) end
if ARGV[10] ~= '' then redis.call('HSET', k, 'expireAt', ARGV[10]) end
if ARGV[11] ~= '' then redis.call('HSET', k, 'timeoutMs', ARGV[11]) end
if ARGV[14] ~= '' then redis.call('HSET', k, 'payloadHash', ARGV[14]) end
if idem ~= '' then
  redis.call('HSET', k, 'idem', idem, 'idempotencyKey', ARGV[13])
  redis.call('SET', P .. ':i:' .. idem, id)
end
redis.call('ZADD', P .. ':all', now, id)
redis.call('ZADD', P .. ':o:' .. owner_key, now, id)
count(nil, 'queued')
schedule(id, task, run_at, now)
emit(id, '"type":"status","status":"queued","attempts":0', now)
redis.call('PUBLISH', P .. ':work', run_at)
return { 1, tostring(now), tostring(run_at) }
