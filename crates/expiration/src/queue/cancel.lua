-- cancel: forget jobs, waiting or leased, and remember the ids for ttl_ms so that a creation
-- arriving after its cancellation schedules nothing. Marks older than ttl_ms are pruned, and the
-- whole set expires ttl_ms after the last cancellation: marks never outlive their use.
-- KEYS: due, leased, jobs, cancelled, versions.  ARGV: ttl_ms, then ids.
-- Returns how many jobs existed.
local due, leased, jobs, cancelled, versions = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids, marks = {}, {}
for i = 2, #ARGV do
  ids[#ids + 1] = ARGV[i]
  marks[#marks + 1] = now
  marks[#marks + 1] = ARGV[i]
end
-- The marks are written first: at maxmemory Redis refuses a script's first write that may grow
-- memory, and only the first, so this order makes the whole cancel refused (and retried) rather
-- than let the marks grow past the limit behind a prune.
redis.call('ZADD', cancelled, unpack(marks))
redis.call('ZREMRANGEBYSCORE', cancelled, '-inf', now - tonumber(ARGV[1]))
redis.call('PEXPIRE', cancelled, ARGV[1])
redis.call('ZREM', due, unpack(ids))
redis.call('ZREM', leased, unpack(ids))
redis.call('HDEL', versions, unpack(ids))
return redis.call('HDEL', jobs, unpack(ids))
