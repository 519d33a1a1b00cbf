-- ARGV: done channel, token digest. Waiting pick-ups wake and find it gone.
if redis.call('DEL', KEYS[1]) == 1 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return 1
