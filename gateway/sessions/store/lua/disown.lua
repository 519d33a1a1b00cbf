-- A touch whose request did not get the reply (it left, or the reply came after redis_timeout) may have
-- claimed the id, or may still be on its way to the server and claim it when it runs. Its claim is nobody's:
-- released by its owner, never another request's; if it is not there, the owner is remembered (for
-- claim_ttl: a claim is dated by its request, so a later one is stale at once) and the touch claims nothing.
-- KEYS: the tombstone, the disowned set.
if redis.call('HGET', KEYS[1], 'o') == ARGV[1] then return redis.call('HDEL', KEYS[1], 'p', 'o') end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 0
