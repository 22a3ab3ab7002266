-- log: append a line, keeping the last `logLimit`. Holder only.
-- ARGV: P, history, id, token, line, logLimit
local id, token = ARGV[3], ARGV[4]
if not held(id, token) then return 0 end
local logs = P .. ':l:' .. id
redis.call('RPUSH', logs, ARGV[5])
redis.call('LTRIM', logs, -tonumber(ARGV[6]), -1)
return 1
