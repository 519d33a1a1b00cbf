-- ARGV: session digest ("" for none), taken channel, token digest. nil: not there (or another session's);
-- 0: still running; else {meta, body}, and the entry is gone.
local rec = redis.call('HMGET', KEYS[1], 'u', 'a', 'b')
if not rec[1] or (rec[1] ~= '' and rec[1] ~= ARGV[1]) then return false end
if not rec[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return {rec[2], rec[3]}
