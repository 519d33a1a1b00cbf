local now = tonumber(ARGV[1])
local absolute = tonumber(ARGV[2])
local claim_ttl = tonumber(ARGV[3])
-- A claim is a field of the tombstone: the tombstone must live at least as long as the claim.
local claim_ms = math.ceil(claim_ttl * 1000)
local rec = redis.call('HMGET', KEYS[1], 'c', 'l', 'i', 'n', 'r', 'e')
if rec[1] then
  local c, l, i, n = tonumber(rec[1]), tonumber(rec[2]), tonumber(rec[3]), tonumber(rec[4])
  local outcome = false
  if now >= c + absolute then outcome = 'lifetime' elseif now >= l + i then outcome = 'expired' end
  if outcome then
    redis.call('DEL', KEYS[1], KEYS[2])
    redis.call('ZREM', KEYS[3], ARGV[5])
    redis.call('HSET', KEYS[2], 'r', outcome == 'lifetime' and 'lifetime' or 'idle')
    local owner = ARGV[7] .. ':' .. ARGV[8]
    if redis.call('SISMEMBER', KEYS[4], owner) == 0 then redis.call('HSET', KEYS[2], 'p', ARGV[1], 'o', owner) end
    redis.call('PEXPIRE', KEYS[2], math.max(tonumber(ARGV[4]), claim_ms))
    ended(KEYS[5], rec[6] or ARGV[5], outcome == 'lifetime' and 'lifetime' or 'idle', rec, now)
    return {outcome, rec[1], rec[2], rec[3], rec[4], rec[5]}
  end
  n = n + 1
  -- A clock behind the last request's (a step back, another replica's) never moves last_seen back.
  local seen, seen_text = l, rec[2]
  if now > l then seen, seen_text = now, ARGV[1] end
  redis.call('HSET', KEYS[1], 'l', seen_text, 'n', n)
  local deadline = math.min(seen + i, c + absolute)
  redis.call('ZADD', KEYS[3], deadline, ARGV[5])
  redis.call('PEXPIRE', KEYS[1], math.ceil((deadline - now + tonumber(ARGV[6])) * 1000))
  return {'live', rec[1], seen_text, rec[3], tostring(n), rec[5], rec[2]}
end
local tomb = redis.call('HMGET', KEYS[2], 'r', 's', 'p')
if tomb[1] and tomb[2] then return {'ended', tomb[1], tomb[2]} end
if tomb[3] and now - tonumber(tomb[3]) < claim_ttl then return {'pending'} end
-- The claim is owned by this call (store token, call number), so only its own request gives it up.
local owner = ARGV[7] .. ':' .. ARGV[8]
-- Its request already gave up (_DISOWN overtook it): claim nothing; nobody reads the answer.
if redis.call('SISMEMBER', KEYS[4], owner) == 1 then return {'pending'} end
redis.call('HSET', KEYS[2], 'p', ARGV[1], 'o', owner)
if tomb[1] then
  if redis.call('PTTL', KEYS[2]) < claim_ms then redis.call('PEXPIRE', KEYS[2], claim_ms) end
  return {'ended', tomb[1]}
end
redis.call('PEXPIRE', KEYS[2], claim_ms)
return {'missing'}
