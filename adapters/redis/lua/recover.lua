-- recover: jobs whose lease expired go back to the queue (attempt counted), or fail when their
-- attempts are spent; a job with a cancel requested ends canceled.
-- ARGV: P, history, batch
-- Returns how many jobs it touched.
local expired = redis.call('ZRANGEBYSCORE', P .. ':run', '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[3]))
local err = '{"message":"The worker running the job stopped renewing its lease.","code":"ERR_OFFLOAD_LEASE_EXPIRED"}'
local touched = 0
for _, id in ipairs(expired) do
  local v = redis.call('HMGET', jkey(id), 'status', 'cancelRequested', 'attempts', 'spec')
  if v[1] ~= 'running' then
    run_del[#run_del + 1] = id
  else
    touched = touched + 1
    if v[2] == '1' then finish(id, 'canceled', nil, nil)
    elseif tonumber(v[3]) >= cjson.decode(v[4]).maxAttempts then finish(id, 'failed', nil, err)
    else requeue(id, NOW, err) end
  end
end
flush()
return touched
