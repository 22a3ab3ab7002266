-- purge: delete jobs that finished before `before`, with their events, logs and keys.
-- ARGV: P, history, before, batch
-- Returns how many it deleted (fewer than batch: none left).
local done = redis.call('ZRANGEBYSCORE', P .. ':fin', '-inf', '(' .. ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(done) do
  local k = jkey(id)
  local v = redis.call('HMGET', k, 'status', 'ownerKey', 'idem')
  fin_del[#fin_del + 1] = id
  if v[1] then
    count(v[1], nil)
    redis.call('ZREM', P .. ':all', id)
    redis.call('ZREM', P .. ':o:' .. v[2], id)
    if v[3] then redis.call('DEL', P .. ':i:' .. v[3]) end
    redis.call('DEL', k, P .. ':e:' .. id, P .. ':l:' .. id)
  end
end
flush()
return #done
