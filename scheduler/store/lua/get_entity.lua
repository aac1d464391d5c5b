-- get_entity: read one entity (reads only).
--
-- KEYS[1..5] entity  entity hash, ops, held, later, seen (keys.EntityKeys)
-- KEYS[6] leases     partition leases zset
-- ARGV[4] entity_id
-- Returns {OK, state or nil, modified_ms, locked_by or nil, backlog} where backlog counts
-- the operations waiting (queued, held back by a lock; not a batch out under a lease, not
-- delayed signals); {NOT_FOUND} for an entity that never got a message (or was removed).
local ek = entity_keys(1)

local h = redis.call('HMGET', ek.hash, 'state', 'modified_ms', 'locked_by', 'claimed_n')
if not h[2] then return {CODE.NOT_FOUND} end
local out = redis.call('ZSCORE', KEYS[6], lease_member(KIND.ENTITY, ARGV[4])) and tonumber(h[4] or 0) or 0
local backlog = redis.call('LLEN', ek.ops) + redis.call('LLEN', ek.held) - out
return {CODE.OK, h[1] or false, h[2], h[3] or false, backlog}
