-- progress: record progress (last value wins) and emit a progress event. Holder only.
-- ARGV: P, history, id, token, progress JSON
local id, token = ARGV[3], ARGV[4]
local v = redis.call('HMGET', jkey(id), 'status', 'token', 'seq')
if v[1] ~= 'running' or v[2] ~= token then return 0 end
local seq = tonumber(v[3]) + 1
redis.call('HSET', jkey(id), 'progress', ARGV[5], 'seq', seq)
event(id, seq, '"type":"progress","progress":' .. ARGV[5])
flush()
return 1
