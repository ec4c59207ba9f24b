-- retry: a leased job failed to fire. Below max attempts it waits delay_ms and is due again;
-- at max attempts it moves to the dead-letter hash. With postpone = '1' the failure was not the
-- job's (a dependency was down): the claim is not counted and it is never dead-lettered.
-- KEYS: due, leased, jobs, dead, versions.
-- ARGV: id, token, delay_ms, max_attempts, reason, wake channel, postpone.
-- Returns 0 (the lease is no longer ours: nothing done), 1 (rescheduled) or 2 (dead-lettered).
local due, leased, jobs, dead, versions = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id = ARGV[1]
local lease = redis.call('ZSCORE', leased, id)
if not lease or tonumber(lease) ~= tonumber(ARGV[2]) then return 0 end
local value = redis.call('HGET', jobs, id)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- The record counts the claims that ended before this one; a job without one (a hand edit) is
-- taken as due now.
local d, a = now, 0
if value then
  local ds, as = string.match(value, '^(%d+):(%d+):')
  d, a = tonumber(ds), tonumber(as)
end
redis.call('ZREM', leased, id)
if ARGV[7] ~= '1' then
  a = a + 1
  if a >= tonumber(ARGV[4]) then
    redis.call('HDEL', jobs, id)
    redis.call('HDEL', versions, id)
    redis.call('HSET', dead, id, cjson.encode({
      due = d, attempts = a, failed_at = now, reason = ARGV[5],
    }))
    return 2
  end
end
local at = now + tonumber(ARGV[3])
local before = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
redis.call('ZADD', due, at, id)
redis.call('HSET', jobs, id, string.format('%d:%d:0', d, a))
if not before[1] or at < tonumber(before[2]) then redis.call('PUBLISH', ARGV[6], at) end
return 1
