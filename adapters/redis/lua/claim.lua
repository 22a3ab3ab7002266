-- claim: lease up to `limit` due jobs of the given tasks (see claim_due).
-- ARGV: P, history, leaseMs, limit, task...
-- Returns {nextDueAt ('' if none or not asked), token1, record1, token2, record2, ...}.
local out = { '' }
out[1] = claim_due(tonumber(ARGV[4]), tonumber(ARGV[3]), { unpack(ARGV, 5) }, out)
flush()
return out
