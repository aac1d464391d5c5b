-- renew_orchestration_leases: extend the orchestration leases a replica still holds in one partition.
--
-- A lease is extended only while the instance's `lease` field still holds the
-- caller's token and its member is still in the leases zset (like BullMQ's
-- extendLock); a lease that was released, swept or taken over is left alone and
-- reported by its absence. An expired lease not yet swept or taken over is still
-- the caller's and is extended. The caller bounds the batch.
--
-- KEYS[1]    generation  partition generation key
-- KEYS[2]    leases      partition leases zset (score = lease expiry, ms)
-- KEYS[3..n] inst        instance hash of each item, in ARGV order
-- ARGV[4]    lease_ms    new lease duration from now
-- ARGV[5..]  instance_id, token  one pair per instance hash in KEYS
-- Returns {OK, lease_expiry_ms, renewed instance ids...}, or {HUB_GONE}.
local leases_key = KEYS[2]
local lease_ms = tonumber(ARGV[4])

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
local expiry = now_ms() + lease_ms
local result = {CODE.OK, expiry}
for i = 3, #KEYS do
  local inst_key, instance_id, token = KEYS[i], ARGV[2 * i - 1], ARGV[2 * i]
  local member = lease_member(KIND.ORCHESTRATION, instance_id)
  if redis.call('HGET', inst_key, 'lease') == token and redis.call('ZSCORE', leases_key, member) then
    redis.call('ZADD', leases_key, 'XX', expiry, member)
    result[#result + 1] = instance_id
  end
end
return result
