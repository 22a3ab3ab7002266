-- retry: a failed or canceled job runs again as new (attempts reset). Admin tools.
-- ARGV: P, history, id
local id = ARGV[3]
local k = jkey(id)
local status = redis.call('HGET', k, 'status')
if status ~= 'failed' and status ~= 'canceled' then return false end
redis.call('HSET', k, 'attempts', 0, 'cancelRequested', '0')
redis.call('HDEL', k, 'result', 'progress', 'startedAt', 'finishedAt', 'expireAt')
requeue(id, NOW, 'null')
flush()
return record(id)
