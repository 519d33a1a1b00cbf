-- A hash whose last field goes is deleted: an unknown id's claim leaves nothing behind.
return redis.call('HDEL', KEYS[1], 'p', 'o')
