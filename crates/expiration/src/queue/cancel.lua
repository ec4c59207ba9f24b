-- cancel: forget jobs, waiting or leased. KEYS: due, leased, jobs.  ARGV: ids.
-- Returns how many existed.
local due, leased, jobs = KEYS[1], KEYS[2], KEYS[3]
redis.call('ZREM', due, unpack(ARGV))
redis.call('ZREM', leased, unpack(ARGV))
return redis.call('HDEL', jobs, unpack(ARGV))
