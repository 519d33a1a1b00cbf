-- Prepended to the scripts that start or end sessions: the lifecycle event goes into the shard's stream in the
-- same script as the change, so it is written exactly when the change is (issue 20). The last three ARGV are
-- always: events on ("1") or off, the streams' retention in seconds, and the gateway instance. Trimmed by the
-- server's clock (the gateway's may be a test's); the entry id's time is the event's `at`.
local ev_on, ev_keep, ev_gateway = ARGV[#ARGV - 2], ARGV[#ARGV - 1], ARGV[#ARGV]
local function emit(stream, ...)
  if ev_on ~= '1' then return end
  local t = redis.call('TIME')
  local floor = string.format('%d', (tonumber(t[1]) - tonumber(ev_keep)) * 1000)
  redis.call('XADD', stream, 'MINID', '~', floor, '*', 'gateway', ev_gateway, ...)
end
local function ended(stream, who, reason, rec, now)
  local duration = string.format('%.3f', math.max(0, now - tonumber(rec[1])))
  emit(stream, 'type', 'session.ended', 'session', who, 'reason', reason, 'replica', rec[5],
    'duration', duration, 'requests', rec[4])
end
