-- get: the job record, or false.
-- ARGV: P, history, id
if redis.call('EXISTS', jkey(ARGV[3])) == 0 then return false end
return record(ARGV[3])
