-- raise_event: RaiseEvent's one atomic write.
--
-- Appends an EventRaised event to the instance's inbox and bumps updated_ms.
-- Where the instance waits does not change for PENDING (a scheduled start stays
-- on the due set and gets the event with its first run; a ready one stays ready)
-- nor for SUSPENDED (delivered after resume); a RUNNING instance is made ready.
-- A terminal instance can process nothing more: like the SDK's reference backend
-- (which never dispatches it) the event is accepted and dropped; nothing is written.
-- An event that the inbox or the next work item has no room for is refused.
--
-- KEYS[1] generation  partition generation key
-- KEYS[2] inst        instance hash
-- KEYS[3] inbox       instance inbox list
-- KEYS[4] ready       partition ready zset
-- ARGV[4] instance_id
-- ARGV[5] event       serialized EventRaised HistoryEvent
-- ARGV[6] max_inbox   pending inbox events allowed
-- ARGV[7] max_bytes   bytes of history and inbox allowed (what a work item carries)
-- Returns {OK, status} (the instance's status), {NOT_FOUND}, {INBOX_FULL} or {TOO_LARGE} (nothing
-- written), or {HUB_GONE}.
local inst_key, inbox_key, ready_key = KEYS[2], KEYS[3], KEYS[4]
local instance_id, event, max_inbox, max_bytes = ARGV[4], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
local status = redis.call('HGET', inst_key, 'status')
if not status then return {CODE.NOT_FOUND} end
if TERMINAL[status] then return {CODE.OK, status} end
local refused = inbox_refusal(inst_key, inbox_key, #event, max_inbox, max_bytes)
if refused then return {refused} end
deliver(inst_key, inbox_key, ready_key, instance_id, status, event, now_ms())
return {CODE.OK, status}
