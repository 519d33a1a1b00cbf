-- A rename between two shards of a Cluster, first: the new id's record, a copy of the old one's (ARGV[1..5]),
-- unless the new id is live. Until _RENAME_FROM the session is live under both ids, never under none.
-- KEYS: the new id's record, tombstone and index.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local c, l, i = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'c', ARGV[1], 'l', ARGV[2], 'i', ARGV[3], 'n', ARGV[4], 'r', ARGV[5])
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'e', ARGV[10]) end
local deadline = math.min(l + i, c + tonumber(ARGV[8]))
redis.call('ZADD', KEYS[3], deadline, ARGV[6])
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((deadline - tonumber(ARGV[7]) + tonumber(ARGV[9])) * 1000)))
return 1
