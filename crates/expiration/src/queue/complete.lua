-- complete: delete fired jobs, but only those still leased under the caller's token.
-- KEYS: leased, jobs.  ARGV: (id, token) pairs.  Returns how many were deleted.
local leased, jobs = KEYS[1], KEYS[2]
local n = #ARGV / 2
local ids = {}
for i = 1, n do ids[i] = ARGV[2 * i - 1] end
local values = redis.call('HMGET', jobs, unpack(ids))
local done = {}
for i = 1, n do
  if values[i] then
    local token = string.match(values[i], ':(%d+)$')
    if token ~= '0' and token == ARGV[2 * i] then done[#done + 1] = ids[i] end
  end
end
if #done > 0 then
  redis.call('ZREM', leased, unpack(done))
  redis.call('HDEL', jobs, unpack(done))
end
return #done
