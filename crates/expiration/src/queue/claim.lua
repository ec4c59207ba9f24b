-- claim: lease up to `limit` jobs whose lease expired or whose due time has come.
-- KEYS: due, leased, jobs, seq.  ARGV: limit, lease_ms.
-- Returns {now_s, now_us, token, next_ms, pending, reclaimed, id1, record1, id2, record2, ...}
-- where token is the lease expiry (ms) of every job of this claim, next_ms the earliest due time
-- or lease expiry left (-1 if none), pending the jobs still waiting or leased after this claim,
-- and each record the job's `due:attempts:token` as it now stands (nil if it has none).
--
-- The hot path writes nothing per job but the lease: a fresh job's record is left as it is, its
-- attempts counting the claims that ended before this one (the worker adds this claim). Only a
-- reclaimed job, whose holder died, has its record rewritten, to count that dead claim.
local due, leased, jobs, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local limit = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Expired leases first: their holder died, and they have waited longest.
local ids = redis.call('ZRANGEBYSCORE', leased, '-inf', now, 'LIMIT', 0, limit)
local reclaimed = #ids
if #ids < limit then
  local fresh = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit - #ids)
  if #fresh > 0 then
    -- They are the first by rank: removing by rank spares a lookup per job.
    redis.call('ZREMRANGEBYRANK', due, 0, #fresh - 1)
    for _, id in ipairs(fresh) do ids[#ids + 1] = id end
  end
end
local result = {t[1], t[2], 0, -1, 0, reclaimed}
if #ids > 0 then
  -- The lease expiry is the claim's token: complete and retry act only on a job whose lease
  -- score still equals it. It only ever increases (seq keeps the last one), so no two claims
  -- share it, even within one millisecond or after the clock stepped back. Kept as a string: a
  -- Lua number would be formatted again for every job's ZADD.
  local token = string.format('%d',
    math.max(now + tonumber(ARGV[2]), tonumber(redis.call('GET', seq) or '0') + 1))
  redis.call('SET', seq, token)
  local records = redis.call('HMGET', jobs, unpack(ids))
  local zadd = {}
  for i, id in ipairs(ids) do
    local record = records[i]
    if i <= reclaimed and record then
      local d, a = string.match(record, '^(%d+):(%d+):')
      record = string.format('%s:%d:0', d, tonumber(a) + 1)
      redis.call('HSET', jobs, id, record)
    end
    zadd[#zadd + 1] = token
    zadd[#zadd + 1] = id
    result[#result + 1] = id
    result[#result + 1] = record
  end
  redis.call('ZADD', leased, unpack(zadd))
  result[3] = token
end
local first_due = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
local first_lease = redis.call('ZRANGE', leased, 0, 0, 'WITHSCORES')
local next_ms = -1
if first_due[1] then next_ms = tonumber(first_due[2]) end
if first_lease[1] and (next_ms < 0 or tonumber(first_lease[2]) < next_ms) then
  next_ms = tonumber(first_lease[2])
end
result[4] = next_ms
result[5] = redis.call('ZCARD', due) + redis.call('ZCARD', leased)
return result
