-- deliver_event: append an event from another instance's outbox to this instance's inbox, once.
--
-- Every message has an id; the instance remembers the ids it took (seen_before /
-- remember: the de-duplication window of the prelude), so a message the relay delivers
-- again (a replica died between delivering and removing it) changes nothing. An
-- event for an instance that does not exist or has ended is dropped. A running
-- instance is made ready; a pending one gets the event with its first run. An event
-- that the inbox or the next work item has no room for is not appended: the instance
-- is marked to fail (`overflow` holds the failure, applied at its next dispatch), so
-- nothing waits forever for an event that was lost. An event meant for one execution (`execution`:
-- a child's end for the parent execution that created it) is dropped once the instance is another
-- execution (it continued as new, or was created again); a rewind keeps what it waited for.
--
-- KEYS[1] generation  partition generation key
-- KEYS[2] seen        instance zset of the message ids it took
-- KEYS[3] inst        instance hash
-- KEYS[4] inbox       instance inbox list
-- KEYS[5] ready       partition ready zset
-- ARGV[4] instance_id
-- ARGV[5] message_id
-- ARGV[6] event       serialized HistoryEvent
-- ARGV[7] max_inbox   pending inbox events allowed
-- ARGV[8] max_bytes   bytes of history and inbox allowed
-- ARGV[9] overflow    the failure ("<error type>\n<message>") if the event has no room
-- ARGV[10] execution  the execution it is meant for, or "" for whichever runs
-- Returns {OK} delivered, {DONE_BEFORE} already delivered, {NOT_FOUND}, {WRONG_STATUS, status}
-- when the instance has ended, {CHANGED} when it is another execution now, {INBOX_FULL} or
-- {TOO_LARGE} when it was marked to fail, {HUB_GONE}.
local seen_key, inst_key, inbox_key, ready_key = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local instance_id, message_id, event = ARGV[4], ARGV[5], ARGV[6]
local max_inbox, max_bytes, overflow = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local execution = ARGV[10]

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
if seen_before(seen_key, message_id) then return {CODE.DONE_BEFORE} end
local status = redis.call('HGET', inst_key, 'status')
if not status then return {CODE.NOT_FOUND} end
if TERMINAL[status] then return {CODE.WRONG_STATUS, status} end
if execution ~= '' and not is_execution(inst_key, execution) then return {CODE.CHANGED} end
local refused = inbox_refusal(inst_key, inbox_key, #event, max_inbox, max_bytes)
local now = now_ms()
remember(seen_key, message_id, now)
if refused then
  redis.call('HSETNX', inst_key, 'overflow', overflow)
  if status == 'RUNNING' then push_work(ready_key, instance_id, now) end
  return {refused}
end
deliver(inst_key, inbox_key, ready_key, instance_id, status, event, now)
return {CODE.OK}
