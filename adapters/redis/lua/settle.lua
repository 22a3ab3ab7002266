-- settle: the end of a run, by its lease holder. A requested cancel wins over any outcome.
-- ARGV: P, history, id, token, outcome, value, retryAt
--   outcome 'complete' (value = result JSON), 'fail' (value = error JSON; retryAt '' = final),
--   'cancel' (acknowledge a cancel), 'release' (hand back, attempt not counted)
-- Returns 1, or 0 when the token is not current.
local id, token, outcome, value = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local k = jkey(id)
local v = redis.call('HMGET', k, 'status', 'token', 'cancelRequested', 'attempts', 'seq')
if v[1] ~= 'running' or v[2] ~= token then return 0 end
local now = now_ms()
if outcome == 'complete' and v[3] ~= '1' then
  -- The common case, written out: one HMGET above and one HSET here instead of finish()'s reads
  -- (a quarter of the Redis time of a job). Same fields, counts and event as finish().
  local seq = tonumber(v[5]) + 1
  count('running', 'succeeded')
  redis.call('HSET', k, 'status', 'succeeded', 'finishedAt', now, 'result', value, 'seq', seq)
  redis.call('HDEL', k, 'token', 'leaseUntil')
  redis.call('ZREM', P .. ':run', id)
  redis.call('ZADD', P .. ':fin', now, id)
  local event = '{"jobId":"' .. id .. '","seq":' .. seq .. ',"at":' .. now ..
    ',"type":"status","status":"succeeded","attempts":' .. v[4] .. ',"result":' .. value .. ',"error":null}'
  local history = P .. ':e:' .. id
  if redis.call('RPUSH', history, event) > HISTORY then redis.call('LTRIM', history, -HISTORY, -1) end
  redis.call('PUBLISH', P .. ':events', event)
  return 1
end
if outcome == 'cancel' or v[3] == '1' then
  finish(id, 'canceled', now, nil, nil)
elseif outcome == 'complete' then
  finish(id, 'succeeded', now, value, nil)
elseif outcome == 'fail' then
  if ARGV[7] ~= '' then requeue(id, tonumber(ARGV[7]), value, now) else finish(id, 'failed', now, nil, value) end
else
  redis.call('HINCRBY', k, 'attempts', -1)
  requeue(id, now, redis.call('HGET', k, 'error') or 'null', now)
end
return 1
