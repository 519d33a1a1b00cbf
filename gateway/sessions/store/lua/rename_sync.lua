-- Requests that came in under the old id between the two: added to the new record (ARGV[3] of them, the
-- latest at ARGV[1], with the idle timeout ARGV[2]). KEYS: the new id's record and index.
local rec = redis.call('HMGET', KEYS[1], 'c', 'l', 'n')
if not rec[1] then return false end
local c, seen, seen_text = tonumber(rec[1]), tonumber(rec[2]), rec[2]
if tonumber(ARGV[1]) > seen then seen, seen_text = tonumber(ARGV[1]), ARGV[1] end
local n = tonumber(rec[3]) + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'l', seen_text, 'i', ARGV[2], 'n', n)
local deadline = math.min(seen + tonumber(ARGV[2]), c + tonumber(ARGV[5]))
redis.call('ZADD', KEYS[2], deadline, ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((deadline - tonumber(ARGV[6]) + tonumber(ARGV[7])) * 1000)))
return {rec[1], seen_text, ARGV[2], tostring(n)}
