-- complete: delete fired jobs, but only those still leased under the caller's token (the lease
-- expiry its claim gave them; a job moved, cancelled or claimed again since has another or none).
-- KEYS: leased, jobs, versions.  ARGV: (id, token) pairs.  Returns how many were deleted.
local leased, jobs, versions = KEYS[1], KEYS[2], KEYS[3]
-- Every job of one claim shares its token, so the jobs still leased under a token are one range
-- of equal scores: one lookup per claim rather than a score per job.
local holders = {}
local done = {}
for i = 1, #ARGV - 1, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local held = holders[token]
  if not held then
    held = {}
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', leased, token, token)) do held[member] = true end
    holders[token] = held
  end
  if held[id] then
    done[#done + 1] = id
    -- Listed twice in one call, a job is still deleted once.
    held[id] = nil
  end
end
if #done > 0 then
  redis.call('ZREM', leased, unpack(done))
  redis.call('HDEL', jobs, unpack(done))
  if redis.call('EXISTS', versions) == 1 then redis.call('HDEL', versions, unpack(done)) end
end
return #done
