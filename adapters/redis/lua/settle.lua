-- settle: the end of runs, each by its lease holder, then a claim for the slots they free (the
-- worker's next jobs without a call of its own). A requested cancel wins over any outcome.
-- ARGV: P, history, leaseMs, limit (0: no claim), task count n, task1..taskn, then per run:
--   id, token, outcome, value, retryAt
--   outcome 'complete' (value = result JSON), 'fail' (value = error JSON; retryAt '' = final),
--   'cancel' (acknowledge a cancel), 'release' (hand back, attempt not counted)
-- Returns {accepted, nextDueAt, token1, record1, ...}: accepted holds 1 per run whose token was
-- current, else 0. The claim happens either way.
local ntasks = tonumber(ARGV[5])
local tasks = ntasks > 0 and { unpack(ARGV, 6, 5 + ntasks) } or {}
local accepted = {}
for i = 6 + ntasks, #ARGV, 5 do
  local id, token, outcome, value, retry_at = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local k = jkey(id)
  local v = redis.call('HMGET', k, 'status', 'token', 'cancelRequested', 'attempts', 'error', 'seq')
  if v[1] == 'running' and v[2] == token then
    accepted[#accepted + 1] = 1
    local cur = { v[1], v[4], v[5], v[6] }
    if outcome == 'cancel' or v[3] == '1' then
      finish(id, 'canceled', nil, nil, cur)
    elseif outcome == 'complete' then
      finish(id, 'succeeded', value, nil, cur)
    elseif outcome == 'fail' and retry_at == '' then
      finish(id, 'failed', nil, value, cur)
    elseif outcome == 'fail' then
      requeue(id, tonumber(retry_at), value)
    else
      redis.call('HINCRBY', k, 'attempts', -1)
      requeue(id, NOW, v[5] or 'null')
    end
  else
    accepted[#accepted + 1] = 0
  end
end
local out = { accepted, '' }
out[2] = claim_due(tonumber(ARGV[4]), tonumber(ARGV[3]), tasks, out)
flush()
return out
