-- release_entity: hand a claimed batch back (abandoned, or its worker's stream ended).
--
-- Applied only under the claim's token: the lease goes and the entity's operations, still
-- queued, make it ready again. With `keep` (its stream ended: the worker may still report),
-- the claim's fields stay, so a completion under the token is applied until the next claim
-- takes the entity (see complete_entity.lua); without (Abandon: the worker gave up), they go too.
--
-- KEYS[1] generation  partition generation key
-- KEYS[2..6] entity   entity hash, ops, held, later, seen (keys.EntityKeys)
-- KEYS[7] entities    partition queue of entities to dispatch
-- KEYS[8] leases      partition leases zset
-- KEYS[9] outbox      partition outbox list
-- ARGV[4] entity_id
-- ARGV[5] token       the claim token of the batch
-- ARGV[6] keep        "1": the token stays acceptable until the next claim; "0": it is refused from now on
-- Returns {OK}, {LEASE_LOST} (nothing changed) or {HUB_GONE}.
local ek = entity_keys(2)
local queue_key, leases_key, outbox_key = KEYS[7], KEYS[8], KEYS[9]
local entity_id, token, keep = ARGV[4], ARGV[5], ARGV[6] == '1'

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
if redis.call('HGET', ek.hash, 'lease') ~= token then return {CODE.LEASE_LOST} end
if keep then
  redis.call('ZREM', leases_key, lease_member(KIND.ENTITY, entity_id))
else
  entity_drop_claim(ek, leases_key, entity_id)
end
if entity_settle(ek, outbox_key) then push_work(queue_key, entity_id, now_ms()) end
return {CODE.OK}
