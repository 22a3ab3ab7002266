-- counts: jobs per status, as HGETALL pairs of P:cnt, and the running ones (P:run holds them all).
-- ARGV: P, history
-- Returns {pairs, running}.
return { redis.call('HGETALL', P .. ':cnt'), redis.call('ZCARD', P .. ':run') }
