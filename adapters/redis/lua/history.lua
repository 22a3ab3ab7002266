-- history: the job's kept events (JSON) and its current seq, or false for an unknown job.
-- ARGV: P, history, id
local seq = redis.call('HGET', jkey(ARGV[3]), 'seq')
if not seq then return false end
return { seq, redis.call('LRANGE', P .. ':e:' .. ARGV[3], 0, -1) }
