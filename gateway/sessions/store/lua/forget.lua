-- The group's consumers of a stream that hold nothing there and have not read for a lease's time are gone
-- replicas' (or ones that handed the stream over): deleted, only by the lease's holder and in one step with
-- the check, so that no hand-back and claim can come between a listing and a delete (the delete would drop
-- the entries the new holder had just claimed). KEYS[1]: the stream, KEYS[2]: its lease (one slot);
-- ARGV[1]: this replica, ARGV[2]: the group, ARGV[3]: the idle ms that make a consumer gone.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local gone = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[2])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] ~= ARGV[1] and tonumber(f['pending']) == 0 and tonumber(f['idle']) >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[2], f['name'])
    gone = gone + 1
  end
end
return gone
