local rec = redis.call('HMGET', KEYS[1], 'c', 'l')
if not rec[1] then return 0 end
redis.call('HSET', KEYS[1], 'i', ARGV[1])
local deadline = math.min(tonumber(rec[2]) + tonumber(ARGV[1]), tonumber(rec[1]) + tonumber(ARGV[2]))
redis.call('ZADD', KEYS[2], deadline, ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil((deadline - tonumber(rec[2]) + tonumber(ARGV[4])) * 1000))
return 1
