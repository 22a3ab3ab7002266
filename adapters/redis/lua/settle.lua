-- settle: the end of a run, by its lease holder, then a claim for the slot it frees (the
-- worker's next job without a call of its own). A requested cancel wins over any outcome.
-- ARGV: P, history, id, token, outcome, value, retryAt, leaseMs, limit (0: no claim), task...
--   outcome 'complete' (value = result JSON), 'fail' (value = error JSON; retryAt '' = final),
--   'cancel' (acknowledge a cancel), 'release' (hand back, attempt not counted)
-- Returns {accepted (1, or 0 when the token is not current), nextDueAt, token1, record1, ...};
-- the claim happens either way.
local id, token, outcome, value = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local k = jkey(id)
local out, events = { 0, '' }, {}
local v = redis.call('HMGET', k, 'status', 'token', 'cancelRequested', 'attempts', 'error', 'seq')
if v[1] == 'running' and v[2] == token then
  out[1] = 1
  local cur = { v[1], v[4], v[5], v[6] }
  if outcome == 'cancel' or v[3] == '1' then
    events[1] = finish(id, 'canceled', nil, nil, cur)
  elseif outcome == 'complete' then
    events[1] = finish(id, 'succeeded', value, nil, cur)
  elseif outcome == 'fail' and ARGV[7] == '' then
    events[1] = finish(id, 'failed', nil, value, cur)
  elseif outcome == 'fail' then
    requeue(id, tonumber(ARGV[7]), value)
  else
    redis.call('HINCRBY', k, 'attempts', -1)
    requeue(id, NOW, v[5] or 'null')
  end
end
if ARGV[9] then
  local _, next_due = claim_due(tonumber(ARGV[9]), tonumber(ARGV[8]), 10, out, events)
  out[2] = next_due
end
publish(events)
return out
