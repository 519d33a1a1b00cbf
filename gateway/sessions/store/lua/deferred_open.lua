-- ARGV: session digest, keep (ms)
redis.call('HSET', KEYS[1], 'u', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
