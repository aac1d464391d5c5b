-- sweep_orchestration_lease: release one orchestration whose lease has expired (a step of the lease sweep).
--
-- The sweep first reads expired members of a partition's leases zset, then runs
-- this script for each with the instance's keys. It re-checks, with Redis time,
-- that the lease is still expired, so a lease renewed, released or taken over in
-- between is left alone. Then it does what release_orchestration does with `keep`,
-- without a token: the claim's worker is gone or too slow, but its completion is
-- applied if it comes before the next claim takes the instance. A lease of an
-- instance that no longer exists is just removed. Any replica may run it at any
-- time; a second run finds nothing to do.
--
-- KEYS[1] generation  partition generation key
-- KEYS[2] leases      partition leases zset (score = lease expiry, ms)
-- KEYS[3] ready       partition ready zset (score = ready since, ms)
-- KEYS[4] inst        instance hash
-- ARGV[4] instance_id
-- Returns {OK, status or false} when the expired lease was released, {NOT_READY} when it is not
-- expired or gone, or {HUB_GONE}.
local leases_key, ready_key, inst_key = KEYS[2], KEYS[3], KEYS[4]
local instance_id = ARGV[4]
local member = lease_member(KIND.ORCHESTRATION, instance_id)

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
local now = now_ms()
local expiry = redis.call('ZSCORE', leases_key, member)
if not expiry or tonumber(expiry) > now then return {CODE.NOT_READY} end
redis.call('ZREM', leases_key, member)
local status = redis.call('HGET', inst_key, 'status')
if not status then return {CODE.OK, false} end
if not IDLE[status] then push_work(ready_key, instance_id, now) end
return {CODE.OK, status}
