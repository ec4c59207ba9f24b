-- schedule: add or move keyed jobs. See the module documentation for the data layout.
-- KEYS: due, leased, jobs, dead, cancelled, versions.
-- ARGV: wake channel, lifetime of a cancellation mark (ms), then (id, due_ms, version) triples.
-- Returns {woke, outcomes}: outcomes has a letter per job, in order: a(dded), m(oved),
-- u(nchanged), s(kipped: cancelled already), o(lder version than the one that scheduled it).
local due, leased, jobs, dead, cancelled, versions = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local n = (#ARGV - 2) / 3
local ids = {}
for i = 1, n do ids[i] = ARGV[3 * i] end
local before = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
local current = redis.call('HMGET', jobs, unpack(ids))
-- A mark past its lifetime skips nothing; such marks are pruned at the end (see there).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale_before = now - tonumber(ARGV[2])
local gone = redis.call('ZMSCORE', cancelled, unpack(ids))
-- Only versions above 0 are stored, so a deployment that never moves a job never reads them.
local known = {}
if redis.call('EXISTS', versions) == 1 then known = redis.call('HMGET', versions, unpack(ids)) end
-- What this call has already written, so that an id twice in one batch behaves as two calls.
local written, written_version = {}, {}
local zadd, hset, vset, unlease, revived = {}, {}, {}, {}, {}
local outcomes = {}
for i = 1, n do
  local id, at, version = ids[i], tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2])
  local old = written[id] or current[i]
  local old_due, old_version = nil, 0
  if old then
    old_due = tonumber(string.match(old, '^(%d+):'))
    old_version = written_version[id] or tonumber(known[i] or '0')
  end
  if gone[i] and tonumber(gone[i]) > stale_before then
    -- The cancellation overtook the creation (they travel on separate consumers).
    outcomes[i] = 's'
  elseif old and version < old_version then
    -- An older order:created handled after a newer one (redelivered, or handled concurrently).
    outcomes[i] = 'o'
  elseif old and old_due == at then
    outcomes[i] = 'u'
    -- A newer version with the same due time changes nothing but the version to respect.
    if version > old_version then
      written_version[id] = version
      vset[#vset + 1] = id
      vset[#vset + 1] = ARGV[3 * i + 2]
    end
  else
    if old then
      outcomes[i] = 'm'
      -- Possibly leased (firing right now): the new due wins; the old holder's complete and
      -- retry no longer find their lease.
      unlease[#unlease + 1] = id
    else
      outcomes[i] = 'a'
      revived[#revived + 1] = id
    end
    local value = string.format('%d:0:0', at)
    written[id], written_version[id] = value, version
    zadd[#zadd + 1] = at
    zadd[#zadd + 1] = id
    hset[#hset + 1] = id
    hset[#hset + 1] = value
    -- Below it, a version can only be 0 over 0 (a lower one is stale): nothing to store.
    if version > 0 then
      vset[#vset + 1] = id
      vset[#vset + 1] = ARGV[3 * i + 2]
    end
  end
end
if #zadd > 0 then
  redis.call('ZADD', due, unpack(zadd))
  redis.call('HSET', jobs, unpack(hset))
end
if #vset > 0 then redis.call('HSET', versions, unpack(vset)) end
if #unlease > 0 then redis.call('ZREM', leased, unpack(unlease)) end
if #revived > 0 then redis.call('HDEL', dead, unpack(revived)) end
-- Pruned after the writes, never before: a script's first write is the one Redis refuses at
-- maxmemory, and any write before it (even one that removes) would let the ZADD through.
redis.call('ZREMRANGEBYSCORE', cancelled, '-inf', stale_before)
local woke = 0
local after = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
if after[1] and (not before[1] or tonumber(after[2]) < tonumber(before[2])) then
  redis.call('PUBLISH', ARGV[1], after[2])
  woke = 1
end
return {woke, table.concat(outcomes)}
