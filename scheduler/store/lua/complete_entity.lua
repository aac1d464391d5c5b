-- complete_entity: apply a worker's batch result to an entity, only under its claim.
--
-- The claim's token is accepted also after the batch was handed back (its stream closed, its
-- lease swept) until the next claim takes the entity: then the entity leaves the queue it went
-- back to, and delayed signals whose time came meanwhile are queued (as a claim would).
--
-- Trims the first `done` operations of the batch from the queue (those the worker did not
-- get to stay first in line), sets or deletes the state (or leaves it), writes the outbox
-- messages (results for calling orchestrations, signals, new orchestrations), drops the
-- claim, then runs lock requests and unlocks now at the head and makes the entity ready
-- again if operations wait.
--
-- KEYS[1] generation  partition generation key
-- KEYS[2..6] entity   entity hash, ops, held, later, seen (keys.EntityKeys)
-- KEYS[7] entities    partition queue of entities to dispatch
-- KEYS[8] leases      partition leases zset
-- KEYS[9] outbox      partition outbox list
-- KEYS[10] due        partition due zset
-- ARGV[4] entity_id
-- ARGV[5] token       the claim token of the batch
-- ARGV[6] done        operations of the batch done (at most the batch)
-- ARGV[7] state       "=<state>" to set it, "-" to delete it, "" to leave it
-- ARGV[8..]           outbox messages (protocol.OutboxMessage)
-- Returns {OK}; {LEASE_LOST} (nothing changed) when the token is not the entity's claim; {HUB_GONE}.
local ek = entity_keys(2)
local queue_key, leases_key, outbox_key = KEYS[7], KEYS[8], KEYS[9]
local entity_id, token, done, state = ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7]

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
local claim = redis.call('HMGET', ek.hash, 'lease', 'claimed_n')
if claim[1] ~= token then return {CODE.LEASE_LOST} end
done = math.min(done, tonumber(claim[2]))
local now = now_ms()

if not redis.call('ZSCORE', leases_key, lease_member(KIND.ENTITY, entity_id)) then  -- handed back
  redis.call('ZREM', queue_key, entity_id)
  entity_release_due(ek, KEYS[10], entity_id, now)
end
if done > 0 then
  redis.call('HINCRBY', ek.hash, 'size', -bytes_of(redis.call('LRANGE', ek.ops, 0, done - 1)))
  redis.call('LTRIM', ek.ops, done, -1)
end
if state == '-' then
  redis.call('HDEL', ek.hash, 'state')
elseif state ~= '' then
  redis.call('HSET', ek.hash, 'state', string.sub(state, 2))
end
redis.call('HSET', ek.hash, 'modified_ms', now)
post_messages(outbox_key, ARGV, 8, #ARGV)
entity_drop_claim(ek, leases_key, entity_id)
if entity_settle(ek, outbox_key) then push_work(queue_key, entity_id, now) end
return {CODE.OK}
