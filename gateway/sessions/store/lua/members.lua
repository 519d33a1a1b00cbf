-- The replicas delivering lifecycle events: each renews its entry every round, and their number sets each
-- one's share of the shard streams. KEYS[1]: the set; ARGV[1]: this replica; ARGV[2]: ms an entry lives
-- unrenewed (a lease's time). The server's clock, so the replicas' clocks need not agree.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('ZCARD', KEYS[1])
