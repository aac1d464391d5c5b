-- deliver_event: append an event from another instance's outbox to this instance's inbox, once.
--
-- Every message has an id; the ids already delivered to the instance are kept in
-- its `delivered` set (gone with the instance), so a message the relay delivers
-- again (a replica died between delivering and removing it) changes nothing. An
-- event for an instance that does not exist or has ended is dropped. A running
-- instance is made ready; a pending one gets the event with its first run.
--
-- KEYS[1] delivered  instance set of delivered message ids
-- KEYS[2] inst       instance hash
-- KEYS[3] inbox      instance inbox list
-- KEYS[4] ready      partition ready zset
-- ARGV[1] message_id
-- ARGV[2] event       serialized HistoryEvent
-- ARGV[3] instance_id
-- ARGV[4] channel     pub/sub channel ("<hub> work <ready key>" when the ready set stops being empty)
-- ARGV[5] hub
-- Returns {0} delivered, {1} already delivered, {2} no such instance or it has ended.
local delivered_key, inst_key, inbox_key, ready_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local message_id, event, instance_id, channel, hub = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

if redis.call('SISMEMBER', delivered_key, message_id) == 1 then return {1} end
local status = redis.call('HGET', inst_key, 'status')
if not status or status == 'COMPLETED' or status == 'FAILED' or status == 'TERMINATED' then return {2} end
redis.call('SADD', delivered_key, message_id)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('RPUSH', inbox_key, event)
redis.call('HSET', inst_key, 'updated_ms', now)
if status == 'RUNNING' then
  if redis.call('ZCARD', ready_key) == 0 then redis.call('PUBLISH', channel, hub .. ' work ' .. ready_key) end
  redis.call('ZADD', ready_key, 'NX', now, instance_id)
end
return {0}
