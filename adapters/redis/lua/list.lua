-- list: jobs newest first (createdAt, then id, descending), filtered, after a cursor.
-- ARGV: P, history, index ('all' or 'o:<owner key>'), status (''), task (''), limit,
--       cursor createdAt (''), cursor id
-- Returns {record, ...} up to limit + 1 (one more tells there is a next page).
local index = P .. ':' .. ARGV[3]
local status, task, want = ARGV[4], ARGV[5], tonumber(ARGV[6]) + 1
local max = ARGV[7] == '' and '+inf' or ARGV[7]
local after_id = ARGV[8]
local out = {}
local offset = 0
while #out < want do
  local ids = redis.call('ZREVRANGEBYSCORE', index, max, '-inf', 'WITHSCORES', 'LIMIT', offset, 200)
  if #ids == 0 then break end
  for i = 1, #ids, 2 do
    local id, score = ids[i], ids[i + 1]
    local skip = ARGV[7] ~= '' and score == ARGV[7] and id >= after_id
    if not skip then
      local v = redis.call('HMGET', jkey(id), 'status', 'task')
      if v[1] and (status == '' or v[1] == status) and (task == '' or v[2] == task) then
        out[#out + 1] = record(id)
        if #out >= want then break end
      end
    end
  end
  offset = offset + 200
end
return out
