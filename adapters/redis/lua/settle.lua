-- settle: the end of a run, by its lease holder. A requested cancel wins over any outcome.
-- ARGV: P, history, id, token, outcome, value, retryAt
--   outcome 'complete' (value = result JSON), 'fail' (value = error JSON; retryAt '' = final),
--   'cancel' (acknowledge a cancel), 'release' (hand back, attempt not counted)
-- Returns 1, or 0 when the token is not current.
local id, token, outcome, value = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local k = jkey(id)
local v = redis.call('HMGET', k, 'status', 'token', 'cancelRequested')
if v[1] ~= 'running' or v[2] ~= token then return 0 end
local now = now_ms()
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
