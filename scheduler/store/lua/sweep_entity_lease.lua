-- sweep_entity_lease: release the claim on an entity's batch whose lease expired.
--
-- Re-checks the expiry (Redis time), so a lease renewed or released meanwhile is left
-- alone; then does what release_entity does with `keep`, without a token (a completion
-- under it is applied until the next claim takes the entity): the entity's operations,
-- still queued, make it ready again. Any replica may run it.
--
-- KEYS[1] generation  partition generation key
-- KEYS[2..6] entity   entity hash, ops, held, later, seen (keys.EntityKeys)
-- KEYS[7] entities    partition queue of entities to dispatch
-- KEYS[8] leases      partition leases zset
-- KEYS[9] outbox      partition outbox list
-- ARGV[4] entity_id
-- Returns {OK} when released, {NOT_READY} when the lease is live or gone, {HUB_GONE}.
local ek = entity_keys(2)
local queue_key, leases_key, outbox_key = KEYS[7], KEYS[8], KEYS[9]
local entity_id = ARGV[4]
local member = lease_member(KIND.ENTITY, entity_id)

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
local now = now_ms()
local expiry = redis.call('ZSCORE', leases_key, member)
if not expiry or tonumber(expiry) > now then return {CODE.NOT_READY} end
redis.call('ZREM', leases_key, member)
if entity_settle(ek, outbox_key) then push_work(queue_key, entity_id, now) end
return {CODE.OK}
