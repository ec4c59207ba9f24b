-- schedule: add or move keyed jobs. See the module documentation for the data layout.
-- KEYS: due, leased, jobs, dead, cancelled.  ARGV: wake channel, then (id, due_ms) pairs.
-- Returns {added, moved, unchanged, woke, skipped}; skipped ids were cancelled already.
local due, leased, jobs, dead, cancelled = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local n = (#ARGV - 1) / 2
local ids = {}
for i = 1, n do ids[i] = ARGV[2 * i] end
local before = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
local current = redis.call('HMGET', jobs, unpack(ids))
local gone = redis.call('ZMSCORE', cancelled, unpack(ids))
-- What this call has already written, so that an id twice in one batch behaves as two calls.
local written = {}
local zadd, hset, unlease, revived = {}, {}, {}, {}
local added, moved, unchanged, skipped = 0, 0, 0, 0
for i = 1, n do
  local id, at = ids[i], tonumber(ARGV[2 * i + 1])
  local old = written[id] or current[i]
  local old_due, token
  if old then
    local d, _, t = string.match(old, '^(%d+):(%d+):(%d+)$')
    old_due, token = tonumber(d), t
  end
  if gone[i] then
    -- The cancellation overtook the creation (they travel on separate consumers).
    skipped = skipped + 1
  elseif old and old_due == at then
    unchanged = unchanged + 1
  else
    if old then
      moved = moved + 1
      -- Leased (firing right now): the new due wins; the old holder's complete no longer matches.
      if token ~= '0' then unlease[#unlease + 1] = id end
    else
      added = added + 1
      revived[#revived + 1] = id
    end
    local value = string.format('%d:0:0', at)
    written[id] = value
    zadd[#zadd + 1] = at
    zadd[#zadd + 1] = id
    hset[#hset + 1] = id
    hset[#hset + 1] = value
  end
end
if #zadd > 0 then
  redis.call('ZADD', due, unpack(zadd))
  redis.call('HSET', jobs, unpack(hset))
end
if #unlease > 0 then redis.call('ZREM', leased, unpack(unlease)) end
if #revived > 0 then redis.call('HDEL', dead, unpack(revived)) end
local woke = 0
local after = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
if after[1] and (not before[1] or tonumber(after[2]) < tonumber(before[2])) then
  redis.call('PUBLISH', ARGV[1], after[2])
  woke = 1
end
return {added, moved, unchanged, woke, skipped}
