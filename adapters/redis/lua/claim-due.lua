-- Prepended (after prelude.lua) to the scripts that claim: claim and settle.

local function due_now(status, run_at) return status == 'queued' and tonumber(run_at) <= NOW end

-- Lease up to `limit` due jobs of `tasks`, oldest first, for `lease_ms`; fail those past their
-- age limit that never started. Appends token, record (without logs) for each to `out`. Returns
-- when the next delayed job comes due ('' when none, or when the limit was reached: the caller
-- comes back anyway).
local function claim_due(limit, lease_ms, tasks, out)
  if limit < 1 or #tasks == 0 then return '' end
  local lease_until = NOW + lease_ms

  -- Promote what came due, in the order it came due.
  local due = redis.call('ZRANGEBYSCORE', P .. ':d', '-inf', NOW, 'LIMIT', 0, 1000)
  if #due > 0 then
    variadic('ZREM', P .. ':d', due)
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
  if #tasks == 1 then
    local list = P .. ':r:' .. tasks[1]
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
      for _, task in ipairs(tasks) do
        local list = P .. ':r:' .. task
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

  local taken = 0
  local token_base
  while taken < limit do
    local id, v = take()
    if not id then break end
    if v[R_EXPIRE_AT] and not v[R_STARTED_AT] and tonumber(v[R_EXPIRE_AT]) <= NOW then
      finish(id, 'failed', nil,
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
      run_add[#run_add + 1] = lease_until
      run_add[#run_add + 1] = id
      event(id, seq, '"type":"status","status":"running","attempts":' .. attempts)
      v[R_STATUS], v[R_STARTED_AT], v[R_ATTEMPTS], v[R_SEQ] = 'running', NOW_S, attempts, seq
      out[#out + 1] = token
      out[#out + 1] = v
    end
  end
  if taken == limit then return '' end
  local next_due = redis.call('ZRANGE', P .. ':d', 0, 0, 'WITHSCORES')
  return next_due[2] or ''
end
