-- claim_activity: hand one queued activity work item to a worker under a lease.
--
-- The item leaves the activity queue in this step, so of many streams claiming it
-- at once exactly one gets it. Its payload stays until the completion.
--
-- KEYS[1] generation    partition generation key
-- KEYS[2] activities    partition activity queue zset
-- KEYS[3] leases        partition leases zset (score = lease expiry, ms)
-- KEYS[4] act_tokens    partition hash: item -> claim token
-- KEYS[5] act_payloads  partition hash: item -> serialized ActivityRequest
-- ARGV[4] item          the work item (protocol.activity_item)
-- ARGV[5] token         claim token
-- ARGV[6] lease_ms      lease duration
-- Returns {OK, lease_expiry_ms, payload}, {NOT_READY} when another claim won or it is gone, or {HUB_GONE}.
local activities_key, leases_key, tokens_key, payloads_key = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local item, token, lease_ms = ARGV[4], ARGV[5], tonumber(ARGV[6])

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
if redis.call('ZREM', activities_key, item) == 0 then return {CODE.NOT_READY} end
local payload = redis.call('HGET', payloads_key, item)
if not payload then return {CODE.NOT_READY} end
local expiry = now_ms() + lease_ms
redis.call('ZADD', leases_key, expiry, lease_member(KIND.ACTIVITY, item))
redis.call('HSET', tokens_key, item, token)
return {CODE.OK, expiry, payload}
