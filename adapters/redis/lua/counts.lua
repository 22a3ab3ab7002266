-- counts: finished jobs per status (HGETALL pairs of P:cnt), and how many jobs exist, run and
-- are finished (queued = all - running - finished).
-- ARGV: P, history
-- Returns {pairs, all, running, finished}.
return { redis.call('HGETALL', P .. ':cnt'), redis.call('ZCARD', P .. ':all'), redis.call('ZCARD', P .. ':run'),
  redis.call('ZCARD', P .. ':fin') }
