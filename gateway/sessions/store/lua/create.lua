-- KEYS[4] the shard's event stream; KEYS[5..]: the indexes the cap is on. On one Redis every shard's (their
-- total, so these keys span hash slots); on a Cluster the session's own shard's alone, and ARGV[6] is that
-- shard's share of the cap. ARGV[10..12]: the event's session (the id; '' for its digest), reason, previous.
local function total()
  local n = 0
  for k = 5, #KEYS do n = n + redis.call('ZCARD', KEYS[k]) end
  return n
end
local rec = redis.call('HMGET', KEYS[1], 'c', 'l', 'i', 'n', 'r')
if rec[1] then
  redis.call('HDEL', KEYS[2], 'p', 'o')
  return {'exists', rec[1], rec[2], rec[3], rec[4], rec[5], tostring(total())}
end
local cap = tonumber(ARGV[6])
local evicted = false
if total() >= cap then
  if ARGV[8] ~= 'evict' then return {'full'} end
  -- End the session nearest its deadline here, atomically: creates racing at the cap each end their own
  -- victim. Index entries whose key lapsed (no record) are dropped on the way.
  for _ = 1, 8 do
    local victim, index, due = nil, nil, nil
    for k = 5, #KEYS do
      local first = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
      if first[1] and (due == nil or tonumber(first[2]) < due) then
        victim, index, due = first[1], KEYS[k], tonumber(first[2])
      end
    end
    if not victim then break end
    redis.call('ZREM', index, victim)
    local tag = string.sub(index, 1, -5)
    local vrec = redis.call('HMGET', tag .. ':s:' .. victim, 'c', 'l', 'i', 'n', 'r', 'e')
    if vrec[1] then
      redis.call('DEL', tag .. ':s:' .. victim, tag .. ':t:' .. victim)
      redis.call('HSET', tag .. ':t:' .. victim, 'r', 'evicted')
      redis.call('PEXPIRE', tag .. ':t:' .. victim, ARGV[9])
      ended(tag .. ':ev', vrec[6] or victim, 'evicted', vrec, tonumber(ARGV[1]))
      evicted = vrec
      break
    end
  end
  if total() >= cap then return {'full'} end
end
local now = tonumber(ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'c', ARGV[1], 'l', ARGV[1], 'i', ARGV[2], 'n', 1, 'r', ARGV[3])
-- The id itself is kept only for events that name it: the sweeper, which knows digests, ends it by name.
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'e', ARGV[10]) end
local deadline = math.min(now + tonumber(ARGV[2]), now + tonumber(ARGV[4]))
redis.call('ZADD', KEYS[3], deadline, ARGV[5])
redis.call('PEXPIRE', KEYS[1], math.ceil((deadline - now + tonumber(ARGV[7])) * 1000))
if ARGV[12] ~= '' then
  emit(KEYS[4], 'type', 'session.started', 'session', ARGV[10] ~= '' and ARGV[10] or ARGV[5], 'reason', ARGV[11],
    'replica', ARGV[3], 'previous', ARGV[12])
else
  emit(KEYS[4], 'type', 'session.started', 'session', ARGV[10] ~= '' and ARGV[10] or ARGV[5], 'reason', ARGV[11],
    'replica', ARGV[3])
end
local active = tostring(total())
if evicted then return {'created', active, evicted[1], evicted[2], evicted[3], evicted[4], evicted[5]} end
return {'created', active}
