-- claim: lease up to `limit` jobs whose lease expired or whose due time has come.
-- KEYS: due, leased, jobs, seq.  ARGV: limit, lease_ms.
-- Returns {now_s, now_us, token, next_ms, pending, reclaimed, id1, due1, attempts1, ...}
-- where next_ms is the earliest due time or lease expiry left (-1 if none) and pending counts
-- the jobs still waiting or leased after this claim.
local due, leased, jobs, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local limit = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[2])
-- Expired leases first: their holder died, and they have waited longest.
local ids = redis.call('ZRANGEBYSCORE', leased, '-inf', now, 'LIMIT', 0, limit)
local reclaimed = #ids
if #ids < limit then
  local fresh = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit - #ids)
  if #fresh > 0 then
    redis.call('ZREM', due, unpack(fresh))
    for _, id in ipairs(fresh) do ids[#ids + 1] = id end
  end
end
local token = 0
local claimed = {}
if #ids > 0 then
  token = redis.call('INCR', seq)
  local values = redis.call('HMGET', jobs, unpack(ids))
  local zadd, hset = {}, {}
  for i, id in ipairs(ids) do
    local d, a = 0, 0
    if values[i] then
      local ds, as = string.match(values[i], '^(%d+):(%d+):')
      d, a = tonumber(ds), tonumber(as)
    else
      -- A job in a set without its record can only come from a hand edit: fire it, never drop it.
      d = now
    end
    a = a + 1
    zadd[#zadd + 1] = expiry
    zadd[#zadd + 1] = id
    hset[#hset + 1] = id
    hset[#hset + 1] = string.format('%d:%d:%d', d, a, token)
    claimed[#claimed + 1] = id
    claimed[#claimed + 1] = d
    claimed[#claimed + 1] = a
  end
  redis.call('ZADD', leased, unpack(zadd))
  redis.call('HSET', jobs, unpack(hset))
end
local next_ms = -1
local first_due = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
local first_lease = redis.call('ZRANGE', leased, 0, 0, 'WITHSCORES')
if first_due[1] then next_ms = tonumber(first_due[2]) end
if first_lease[1] and (next_ms < 0 or tonumber(first_lease[2]) < next_ms) then
  next_ms = tonumber(first_lease[2])
end
local pending = redis.call('ZCARD', due) + redis.call('ZCARD', leased)
local result = {t[1], t[2], token, next_ms, pending, reclaimed}
for _, v in ipairs(claimed) do result[#result + 1] = v end
return result
