-- stats: a consistent snapshot for inspection and metrics. KEYS: due, leased, dead.
-- Returns {waiting, leased, dead, next_due_ms (-1 if none), now_ms}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_due = -1
if first[1] then next_due = tonumber(first[2]) end
return {redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2]), redis.call('HLEN', KEYS[3]), next_due, now}
