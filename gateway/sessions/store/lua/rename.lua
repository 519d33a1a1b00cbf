-- KEYS: the old id's record, tombstone and index, then the new id's. The two ids usually live on different
-- shards: on a Cluster this runs only when they share one; otherwise _RENAME_TO, _RENAME_FROM and then
-- _RENAME_SYNC or _RENAME_UNDO, each on one shard.
local rec = redis.call('HMGET', KEYS[1], 'c', 'l', 'i', 'n', 'r')
if not rec[1] or redis.call('EXISTS', KEYS[4]) == 1 then return false end
local now = tonumber(ARGV[6])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[5])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[4], 'c', rec[1], 'l', rec[2], 'i', rec[3], 'n', rec[4], 'r', rec[5])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[4], 'e', ARGV[8]) end
local deadline = math.min(tonumber(rec[2]) + tonumber(rec[3]), tonumber(rec[1]) + tonumber(ARGV[7]))
redis.call('ZADD', KEYS[6], deadline, ARGV[2])
redis.call('PEXPIRE', KEYS[4], math.max(1, math.ceil((deadline - now + tonumber(ARGV[5])) * 1000)))
redis.call('HSET', KEYS[2], 'r', 'renamed', 's', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
-- The event names both ids as events do (ARGV[8], ARGV[9]: the ids, or '' for their digests). It goes to the
-- old id's stream (KEYS[7]), after its start, as on a Cluster's rename between shards (rename_from.lua).
emit(KEYS[7], 'type', 'session.renamed', 'session', ARGV[8] ~= '' and ARGV[8] or ARGV[2],
  'previous', ARGV[9] ~= '' and ARGV[9] or ARGV[1], 'reason', 'rename', 'replica', rec[5])
return rec
