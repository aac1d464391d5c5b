-- deliver_entity_message: put a message (signal, call, lock request, unlock) on an entity, once.
--
-- The entity remembers the ids of the messages it took (seen_before / remember: the
-- de-duplication window of the prelude), so a message delivered again (a client's retried signal with its request id, an
-- outbox message the relay delivers twice) changes nothing. The entity exists from its first
-- message on (indexed for queries). An operation (signal, call) is refused when the entity
-- already has `max_queue` messages waiting or their bytes would pass `max_bytes`; lock
-- requests and unlocks are never refused. A signal due later waits in `later` (and the
-- entity on the due set); anything else is queued (see entity_queue), after any delayed
-- signals whose time has come; with no batch out, lock requests and unlocks at the head run
-- now and an operation at the head makes the entity ready.
--
-- KEYS[1] generation  partition generation key
-- KEYS[2..6] entity   entity hash, ops, held, later, seen (keys.EntityKeys)
-- KEYS[7] entities    partition queue of entities to dispatch
-- KEYS[8] due         partition due zset
-- KEYS[9] index       partition entity index
-- KEYS[10] outbox     partition outbox list
-- ARGV[4] entity_id
-- ARGV[5] message_id  what de-duplicates it
-- ARGV[6] record      the message (protocol.EntityMessage)
-- ARGV[7] max_queue   messages that may wait
-- ARGV[8] max_bytes   bytes of messages that may wait
-- Returns {OK, 1} when the message made the entity ready (it was not queued before: the caller may
-- offer it to a stream), {OK, 0} otherwise (its batch is out, or it was queued already), {DONE_BEFORE},
-- {INBOX_FULL}, {TOO_LARGE, bytes} or {HUB_GONE}.
local ek = entity_keys(2)
local queue_key, due_key, index_key, outbox_key = KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local entity_id, message_id, record = ARGV[4], ARGV[5], ARGV[6]
local max_queue, max_bytes = tonumber(ARGV[7]), tonumber(ARGV[8])

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
if seen_before(ek.seen, message_id) then return {CODE.DONE_BEFORE} end
local kind, _, _, arg = entity_header(record)
local size = tonumber(redis.call('HGET', ek.hash, 'size') or 0) + #record
if kind == ENTITY_MSG.SIGNAL or kind == ENTITY_MSG.CALL then
  local waiting = redis.call('LLEN', ek.ops) + redis.call('LLEN', ek.held) + redis.call('ZCARD', ek.later)
  if waiting >= max_queue then return {CODE.INBOX_FULL} end
  if size > max_bytes then return {CODE.TOO_LARGE, size} end
end
local now = now_ms()

remember(ek.seen, message_id, now)
if redis.call('HSETNX', ek.hash, 'modified_ms', now) == 1 then redis.call('ZADD', index_key, 0, entity_id) end
redis.call('HSET', ek.hash, 'size', size)
local due = kind == ENTITY_MSG.SIGNAL and tonumber(arg)
if due and due > now then
  redis.call('ZADD', ek.later, due, record)
  add_due(due_key, entity_id, due, true)
  return {CODE.OK, 0}
end
entity_release_due(ek, due_key, entity_id, now)
entity_queue(ek, record)
if not redis.call('HGET', ek.hash, 'lease') and entity_settle(ek, outbox_key)
    and push_work(queue_key, entity_id, now) then
  return {CODE.OK, 1}
end
return {CODE.OK, 0}
