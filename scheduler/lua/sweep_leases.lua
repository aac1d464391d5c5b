-- sweep_leases: release one orchestration whose lease has expired (the lease sweep's per-instance step).
--
-- The sweep first reads expired members of a partition's leases zset, then runs
-- this script for each with the instance's keys. It re-checks, with Redis time,
-- that the lease is still expired, so a lease renewed, released or taken over in
-- between is left alone. Then it does what release_orchestration does, without a
-- token (the claim's worker is gone or too slow): the lease and the claim fields
-- go and the instance is made ready again unless its status cannot run now. A
-- lease of an instance that no longer exists is just removed. Any replica may run
-- it at any time; a second run finds nothing to do.
--
-- KEYS[1] leases  partition leases zset (member "o|<id>", score = lease expiry, ms)
-- KEYS[2] ready   partition ready zset (score = ready since, ms)
-- KEYS[3] inst    instance hash
-- ARGV[1] instance_id
-- Returns {1, status or false} when the expired lease was released, {0} when it is not expired or gone.
local leases_key, ready_key, inst_key = KEYS[1], KEYS[2], KEYS[3]
local instance_id = ARGV[1]
local member = 'o|' .. instance_id
local idle = {COMPLETED = true, FAILED = true, TERMINATED = true, SUSPENDED = true}

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = redis.call('ZSCORE', leases_key, member)
if not expiry or tonumber(expiry) > now then return {0} end

redis.call('ZREM', leases_key, member)
local status = redis.call('HGET', inst_key, 'status')
if not status then return {1, false} end
redis.call('HDEL', inst_key, 'lease', 'claimed_n', 'episode_start')
if not idle[status] then
  redis.call('ZADD', ready_key, 'NX', now, instance_id)
end
return {1, status}
