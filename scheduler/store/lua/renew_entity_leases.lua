-- renew_entity_leases: extend the leases of batches a live stream still holds.
--
-- A lease is extended only while the token is the entity's current claim (a batch
-- completed through another replica, or taken over after its lease expired, is not).
--
-- KEYS[1] generation  partition generation key
-- KEYS[2] leases      partition leases zset
-- KEYS[3..] hashes    the hash of each entity, in the order of the pairs below
-- ARGV[4] lease_ms
-- ARGV[5..] pairs     entity id, claim token
-- Returns {OK, expiry, entity ids renewed...} or {HUB_GONE}.
local leases_key = KEYS[2]
local lease_ms = tonumber(ARGV[4])

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
local expiry = now_ms() + lease_ms
local result = {CODE.OK, expiry}
for i = 3, #KEYS do
  local entity_id, token = ARGV[2 * i - 1], ARGV[2 * i]
  local member = lease_member(KIND.ENTITY, entity_id)
  if redis.call('HGET', KEYS[i], 'lease') == token and redis.call('ZSCORE', leases_key, member) then
    redis.call('ZADD', leases_key, 'XX', expiry, member)
    result[#result + 1] = entity_id
  end
end
return result
