-- Or the old id ended meanwhile (expired, ended by a client or another replica): the copy goes too.
-- KEYS: the new id's record and index.
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
