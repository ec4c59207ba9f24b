-- requeue: dead-lettered jobs become due now, with their attempts reset.
-- KEYS: due, jobs, dead.  ARGV: wake channel, then ids (none: every dead job).
-- Returns how many were requeued.
local due, jobs, dead = KEYS[1], KEYS[2], KEYS[3]
local ids = {}
if #ARGV > 1 then
  for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('HKEYS', dead)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local count = 0
for _, id in ipairs(ids) do
  local record = redis.call('HGET', dead, id)
  -- A job scheduled again since it died is live already: leave it alone.
  if record and redis.call('HEXISTS', jobs, id) == 0 then
    local job = cjson.decode(record)
    redis.call('HSET', jobs, id, string.format('%d:0:0', job.due))
    redis.call('ZADD', due, now, id)
    redis.call('HDEL', dead, id)
    count = count + 1
  end
end
if count > 0 then redis.call('PUBLISH', ARGV[1], now) end
return count
