-- cancel: a queued job ends canceled at once; a running one is flagged and its worker told.
-- ARGV: P, history, id, owner check ('*' any, else the owner key suffix that must match)
-- Returns {outcome, record} (record absent for not-found).
local id, owner_check = ARGV[3], ARGV[4]
local k = jkey(id)
local v = redis.call('HMGET', k, 'status', 'ownerKey', 'cancelRequested', 'seq')
if not v[1] or (owner_check ~= '*' and v[2] ~= owner_check) then return { 'not-found' } end
if v[1] == 'queued' then
  finish(id, 'canceled', nil, nil)
  flush()
  return { 'canceled', record(id) }
end
if v[1] == 'running' then
  if v[3] ~= '1' then
    redis.call('HSET', k, 'cancelRequested', '1')
    -- Not a client-visible change: no seq bump, not kept in history. Workers listen on P:cancel
    -- alone (not to every job's events).
    redis.call('PUBLISH', P .. ':events', '{"jobId":"' .. id .. '","seq":' .. v[4] .. ',"type":"cancel","at":' .. NOW_S .. '}')
    redis.call('PUBLISH', P .. ':cancel', id)
  end
  return { 'requested', record(id) }
end
return { 'finished', record(id) }
