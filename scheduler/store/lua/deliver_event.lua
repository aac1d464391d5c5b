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
-- ARGV[3] instance_id
-- ARGV[4] message_id
-- ARGV[5] event       serialized HistoryEvent
-- Returns {OK} delivered, {DONE_BEFORE} already delivered, {NOT_FOUND}, or {WRONG_STATUS, status}
-- when the instance has ended.
local delivered_key, inst_key, inbox_key, ready_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local instance_id, message_id, event = ARGV[3], ARGV[4], ARGV[5]

if redis.call('SISMEMBER', delivered_key, message_id) == 1 then return {CODE.DONE_BEFORE} end
local status = redis.call('HGET', inst_key, 'status')
if not status then return {CODE.NOT_FOUND} end
if TERMINAL[status] then return {CODE.WRONG_STATUS, status} end
redis.call('SADD', delivered_key, message_id)
deliver(inst_key, inbox_key, ready_key, instance_id, status, event, now_ms())
return {CODE.OK}
