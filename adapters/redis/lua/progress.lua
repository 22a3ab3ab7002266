-- progress: record progress (last value wins) and emit a progress event. Holder only.
-- ARGV: P, history, id, token, progress JSON
local id, token = ARGV[3], ARGV[4]
if not held(id, token) then return 0 end
redis.call('HSET', jkey(id), 'progress', ARGV[5])
emit(id, '"type":"progress","progress":' .. ARGV[5], now_ms())
return 1
