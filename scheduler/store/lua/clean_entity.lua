-- clean_entity: CleanEntityStorage's step for one entity.
--
-- Releases the lock of critical section `section` if the entity still holds it (the
-- caller found that its orchestration has ended or is gone): what waited for it moves
-- up and, with no batch out, runs or makes the entity ready. With `remove_empty`, an
-- entity with no state, nothing waiting or delayed, no lock and no batch out is removed.
--
-- KEYS[1] generation  partition generation key
-- KEYS[2..6] entity   entity hash, ops, held, later, seen (keys.EntityKeys)
-- KEYS[7] entities    partition queue of entities to dispatch
-- KEYS[8] index       partition entity index
-- KEYS[9] outbox      partition outbox list
-- ARGV[4] entity_id
-- ARGV[5] section       critical section whose lock to release, or ""
-- ARGV[6] remove_empty  "1" to remove the entity if it is empty
-- Returns {OK, removed (0/1), released (0/1)} or {HUB_GONE}.
local ek = entity_keys(2)
local queue_key, index_key, outbox_key = KEYS[7], KEYS[8], KEYS[9]
local entity_id, section, remove_empty = ARGV[4], ARGV[5], ARGV[6] == '1'

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
local released, removed = 0, 0
local h = redis.call('HMGET', ek.hash, 'lock_section', 'lease', 'state', 'modified_ms')
if not h[4] then
  redis.call('ZREM', index_key, entity_id)
  return {CODE.OK, 0, 0}
end
if section ~= '' and h[1] == section then
  entity_unlock(ek)
  released = 1
  if not h[2] and entity_settle(ek, outbox_key) then push_work(queue_key, entity_id, now_ms()) end
end
if remove_empty and not h[3] and not h[2] and not redis.call('HGET', ek.hash, 'locked_by')
    and redis.call('LLEN', ek.ops) + redis.call('LLEN', ek.held) + redis.call('ZCARD', ek.later) == 0 then
  redis.call('DEL', ek.hash, ek.ops, ek.held, ek.later, ek.seen)
  redis.call('ZREM', index_key, entity_id)
  removed = 1
end
return {CODE.OK, removed, released}
