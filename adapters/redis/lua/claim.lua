-- claim: lease up to `limit` due jobs of the given tasks, oldest first; fail those past their
-- age limit that never started.
-- ARGV: P, history, leaseMs, limit, task...
-- Returns {nextDueAt ('' if none), token1, record1, token2, record2, ...}.
local lease_ms, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
-- Promote what came due.
local due = redis.call('ZRANGEBYSCORE', P .. ':d', '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(due) do
  redis.call('ZREM', P .. ':d', id)
  local v = redis.call('HMGET', jkey(id), 'status', 'runAt', 'task')
  -- Stale entries (canceled, or re-scheduled since) are dropped.
  if v[1] == 'queued' and tonumber(v[2]) <= now then make_ready(id, v[3]) end
end
local out = { '' }
local taken = 0
while taken < limit do
  local best, best_ord, best_list = nil, nil, nil
  for i = 5, #ARGV do
    local list = P .. ':r:' .. ARGV[i]
    while true do
      local head = redis.call('LINDEX', list, 0)
      if not head then break end
      local v = redis.call('HMGET', jkey(head), 'status', 'runAt', 'ord')
      if v[1] == 'queued' and tonumber(v[2]) <= now then
        if not best_ord or tonumber(v[3]) < best_ord then best, best_ord, best_list = head, tonumber(v[3]), list end
        break
      end
      redis.call('LPOP', list)
    end
  end
  if not best then break end
  redis.call('LPOP', best_list)
  local k = jkey(best)
  local v = redis.call('HMGET', k, 'expireAt', 'startedAt')
  if v[1] and not v[2] and tonumber(v[1]) <= now then
    finish(best, 'failed', now, nil, '{"message":"The job was not started before its age limit.","code":"ERR_OFFLOAD_EXPIRED"}')
  else
    count('queued', 'running')
    local token = tostring(redis.call('INCR', P .. ':tok'))
    local attempts = redis.call('HINCRBY', k, 'attempts', 1)
    redis.call('HSET', k, 'status', 'running', 'startedAt', now, 'token', token, 'leaseUntil', now + lease_ms)
    redis.call('ZADD', P .. ':run', now + lease_ms, best)
    emit(best, '"type":"status","status":"running","attempts":' .. attempts, now)
    out[#out + 1] = token
    out[#out + 1] = record(best)
    taken = taken + 1
  end
end
local next_due = redis.call('ZRANGE', P .. ':d', 0, 0, 'WITHSCORES')
if next_due[2] then out[1] = next_due[2] end
return out
