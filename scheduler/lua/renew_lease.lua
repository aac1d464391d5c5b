-- renew_lease: extend the leases a replica still holds in one partition.
--
-- A lease is extended only while the instance's `lease` field still holds the
-- caller's token and its member is still in the leases zset (like BullMQ's
-- extendLock); a lease that was released, swept or taken over is left alone and
-- reported by its absence. An expired lease not yet swept or taken over is still
-- the caller's and is extended. The caller bounds the batch.
--
-- KEYS[1]    leases  partition leases zset (member "o|<id>", score = lease expiry, ms)
-- KEYS[2..n] inst    instance hash of each item, in ARGV order
-- ARGV[1]    lease_ms  new lease duration from now
-- ARGV[2..]  instance_id, token  one pair per instance hash in KEYS
-- Returns {lease_expiry_ms, renewed instance ids...}
local leases_key = KEYS[1]
local lease_ms = tonumber(ARGV[1])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + lease_ms

local result = {expiry}
for i = 2, #KEYS do
  local inst_key, instance_id, token = KEYS[i], ARGV[2 * i - 2], ARGV[2 * i - 1]
  local member = 'o|' .. instance_id
  if redis.call('HGET', inst_key, 'lease') == token and redis.call('ZSCORE', leases_key, member) then
    redis.call('ZADD', leases_key, 'XX', expiry, member)
    result[#result + 1] = instance_id
  end
end
return result
