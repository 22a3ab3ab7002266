-- claim: lease up to `limit` due jobs of the given tasks (see claim_due).
-- ARGV: P, history, leaseMs, limit, task...
-- Returns {nextDueAt ('' if none or not asked), token1, record1, token2, record2, ...}.
local out, events = { '' }, {}
local _, next_due = claim_due(tonumber(ARGV[4]), tonumber(ARGV[3]), 5, out, events)
out[1] = next_due
publish(events)
return out
