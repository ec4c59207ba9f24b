-- retry: a leased job failed to fire. Below max attempts it waits delay_ms and is due again;
-- at max attempts it moves to the dead-letter hash. With postpone = '1' the failure was not the
-- job's (a dependency was down): the claim's attempt is given back and it is never dead-lettered.
-- KEYS: due, leased, jobs, dead.
-- ARGV: id, token, delay_ms, max_attempts, reason, wake channel, postpone.
-- Returns 0 (the lease is no longer ours: nothing done), 1 (rescheduled) or 2 (dead-lettered).
local due, leased, jobs, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id = ARGV[1]
local value = redis.call('HGET', jobs, id)
if not value then return 0 end
local d, a, token = string.match(value, '^(%d+):(%d+):(%d+)$')
if token == '0' or token ~= ARGV[2] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', leased, id)
if ARGV[7] == '1' then
  a = tostring(math.max(tonumber(a) - 1, 0))
elseif tonumber(a) >= tonumber(ARGV[4]) then
  redis.call('HDEL', jobs, id)
  redis.call('HSET', dead, id, cjson.encode({
    due = tonumber(d), attempts = tonumber(a), failed_at = now, reason = ARGV[5],
  }))
  return 2
end
local at = now + tonumber(ARGV[3])
local before = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
redis.call('ZADD', due, at, id)
redis.call('HSET', jobs, id, string.format('%s:%s:0', d, a))
if not before[1] or at < tonumber(before[2]) then redis.call('PUBLISH', ARGV[6], at) end
return 1
