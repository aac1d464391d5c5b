-- claim_entity: hand a batch of one ready entity's operations to a worker under a lease.
--
-- The entity leaves the ready queue in this step, so of many replicas claiming it at once one gets
-- it. Nothing is handed out while another claim's lease is live (one batch per entity at a time);
-- an expired one not yet swept is taken over. Delayed signals whose time has come are queued first
-- (also when refused for a live claim: the promoter has taken the entity off the due set, and the
-- batch's completion makes it ready again), and lock requests and unlocks at the head run (see
-- entity_settle). The batch is the operations at the head, up to the next lock request or unlock,
-- at most `max_ops` of them and, with the state, at most `max_bytes` (one operation always goes).
-- The operations stay queued: the completion trims those done, so an abandoned claim loses nothing.
--
-- KEYS[1] generation  partition generation key
-- KEYS[2..6] entity   entity hash, ops, held, later, seen (keys.EntityKeys)
-- KEYS[7] entities    partition queue of entities to dispatch
-- KEYS[8] leases      partition leases zset
-- KEYS[9] due         partition due zset
-- KEYS[10] outbox     partition outbox list
-- ARGV[4] entity_id
-- ARGV[5] token       claim token (opaque, made by the caller)
-- ARGV[6] lease_ms    lease duration
-- ARGV[7] max_ops     operations in one batch
-- ARGV[8] max_bytes   bytes of state and operations in one batch
-- Returns {OK, lease_expiry_ms, state or nil, {messages...}}; {NOT_READY} (another claim won, or
-- nothing to run now), {NOT_FOUND}, {LEASED} or {HUB_GONE}.
local ek = entity_keys(2)
local queue_key, leases_key, due_key, outbox_key = KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local entity_id, token, lease_ms = ARGV[4], ARGV[5], tonumber(ARGV[6])
local max_ops, max_bytes = tonumber(ARGV[7]), tonumber(ARGV[8])
local member = lease_member(KIND.ENTITY, entity_id)

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
if redis.call('ZREM', queue_key, entity_id) == 0 then return {CODE.NOT_READY} end
local state = redis.call('HGET', ek.hash, 'state')
if redis.call('EXISTS', ek.hash) == 0 then return {CODE.NOT_FOUND} end
local now = now_ms()
local held = redis.call('ZSCORE', leases_key, member)
if held and tonumber(held) > now then
  entity_release_due(ek, due_key, entity_id, now)  -- queued behind the batch; its completion makes it ready
  return {CODE.LEASED}
end

entity_release_due(ek, due_key, entity_id, now)
if not entity_settle(ek, outbox_key) then
  entity_drop_claim(ek, leases_key, entity_id)  -- an expired claim's operations were all done meanwhile
  return {CODE.NOT_READY}
end
local budget = max_bytes - #(state or '')
local batch = {}
for _, record in ipairs(redis.call('LRANGE', ek.ops, 0, max_ops - 1)) do
  local kind = string.sub(record, 1, 1)
  if kind ~= ENTITY_MSG.SIGNAL and kind ~= ENTITY_MSG.CALL then break end
  budget = budget - #record
  if budget < 0 and #batch > 0 then break end
  batch[#batch + 1] = record
end
local expiry = now + lease_ms
redis.call('ZADD', leases_key, expiry, member)
redis.call('HSET', ek.hash, 'lease', token, 'claimed_n', #batch)
return {CODE.OK, expiry, state or false, batch}
