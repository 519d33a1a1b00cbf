-- KEYS: the id's record and tombstone. An id that is live, or already has a tombstone, keeps it.
redis.call('HDEL', KEYS[2], 'p', 'o')
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], 'r', ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
