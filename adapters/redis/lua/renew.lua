-- renew: extend the lease of the current holder.
-- ARGV: P, history, id, token, leaseMs
-- Returns cancelRequested ('1' or '0'), or false when the token is not current.
local id, token = ARGV[3], ARGV[4]
local v = redis.call('HMGET', jkey(id), 'status', 'token', 'cancelRequested')
if v[1] ~= 'running' or v[2] ~= token then return false end
local until_ms = NOW + tonumber(ARGV[5])
redis.call('HSET', jkey(id), 'leaseUntil', until_ms)
redis.call('ZADD', P .. ':run', until_ms, id)
return v[3]
