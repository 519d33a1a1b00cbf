-- END ends a live session for a reason; SWEEP ends it only if it is due. Both remove the index entry in
-- the same script, so two replicas never both end one session.
local rec = redis.call('HMGET', KEYS[1], 'c', 'l', 'i', 'n', 'r', 'e')
if not rec[1] then
  -- No session: an index entry left is one whose key lapsed by its TTL while no gateway ran.
  redis.call('ZREM', KEYS[3], ARGV[1])
  return false
end
local now = tonumber(ARGV[3])
local reason = ARGV[2]
if ARGV[5] == 'due' then
  if redis.call('ZSCORE', KEYS[3], ARGV[1]) == false then return false end
  local c, l, i = tonumber(rec[1]), tonumber(rec[2]), tonumber(rec[3])
  local deadline = math.min(l + i, c + tonumber(ARGV[6]))
  if deadline > now then
    redis.call('ZADD', KEYS[3], deadline, ARGV[1])
    return false
  end
  if now >= c + tonumber(ARGV[6]) then reason = 'lifetime' else reason = 'idle' end
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[2], 'r', reason)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
ended(KEYS[4], rec[6] or ARGV[1], reason, rec, now)
return {reason, rec[1], rec[2], rec[3], rec[4], rec[5]}
