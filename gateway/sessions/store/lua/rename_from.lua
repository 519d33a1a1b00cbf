-- Then the old id, if still live: its record goes, its tombstone names the successor; its record as it was
-- then (requests may have come in under the old id meanwhile). KEYS: the old id's record, tombstone and index.
local rec = redis.call('HMGET', KEYS[1], 'c', 'l', 'i', 'n', 'r')
if not rec[1] then return false end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[2], 'r', 'renamed', 's', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
-- The one step of the four that knows the rename happened: its event, in the old id's shard's stream.
emit(KEYS[4], 'type', 'session.renamed', 'session', ARGV[4], 'previous', ARGV[5], 'reason', 'rename',
  'replica', rec[5])
return rec
