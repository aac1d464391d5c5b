-- raise_event: RaiseEvent's one atomic write.
--
-- Appends an EventRaised event to the instance's inbox and bumps updated_ms.
-- Where the instance waits does not change for PENDING (a scheduled start stays
-- on the due set and gets the event with its first run; a ready one stays ready)
-- nor for SUSPENDED (delivered after resume); a RUNNING instance is made ready.
-- A terminal instance can process nothing more: like the SDK's reference backend
-- (which never dispatches it) the event is accepted and dropped; nothing is written.
--
-- KEYS[1] inst   instance hash
-- KEYS[2] inbox  instance inbox list
-- KEYS[3] ready  partition ready zset
-- ARGV[1] instance_id
-- ARGV[2] event    serialized EventRaised HistoryEvent
-- ARGV[3] channel  pub/sub channel ("<hub> work <ready key>" when the ready set stops being empty)
-- ARGV[4] hub      task hub name (for the wake-up message)
-- Returns {0, status} (the instance's status), or {2} if there is no such instance.
local inst_key, inbox_key, ready_key = KEYS[1], KEYS[2], KEYS[3]
local instance_id, event, channel, hub = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local status = redis.call('HGET', inst_key, 'status')
if not status then
  return {2}
end
if status == 'COMPLETED' or status == 'FAILED' or status == 'TERMINATED' then
  return {0, status}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

redis.call('RPUSH', inbox_key, event)
redis.call('HSET', inst_key, 'updated_ms', now)
if status == 'RUNNING' then
  if redis.call('ZCARD', ready_key) == 0 then redis.call('PUBLISH', channel, hub .. ' work ' .. ready_key) end
  redis.call('ZADD', ready_key, 'NX', now, instance_id)
end
return {0, status}
