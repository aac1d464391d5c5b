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
-- ARGV[3] instance_id
-- ARGV[4] event  serialized EventRaised HistoryEvent
-- Returns {OK, status} (the instance's status), or {NOT_FOUND}.
local inst_key, inbox_key, ready_key = KEYS[1], KEYS[2], KEYS[3]
local instance_id, event = ARGV[3], ARGV[4]

local status = redis.call('HGET', inst_key, 'status')
if not status then return {CODE.NOT_FOUND} end
if TERMINAL[status] then return {CODE.OK, status} end
deliver(inst_key, inbox_key, ready_key, instance_id, status, event, now_ms())
return {CODE.OK, status}
