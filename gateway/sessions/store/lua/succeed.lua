if redis.call('HEXISTS', KEYS[1], 'r') == 0 then redis.call('HSET', KEYS[1], 'r', 'unknown') end
redis.call('HSET', KEYS[1], 's', ARGV[1])
redis.call('HDEL', KEYS[1], 'p', 'o')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
