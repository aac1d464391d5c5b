-- claim_activity: hand one queued activity work item to a worker under a lease.
--
-- The item leaves the activity queue in this step, so of many streams claiming it
-- at once exactly one gets it. Its payload stays until the completion.
--
-- KEYS[1] activities    partition activity queue zset
-- KEYS[2] leases        partition leases zset (member "a|<item>", score = lease expiry, ms)
-- KEYS[3] act_tokens    partition hash: item -> claim token
-- KEYS[4] act_payloads  partition hash: item -> serialized ActivityRequest
-- ARGV[1] item          the work item ("<instance id>\n<execution id>\n<task id>")
-- ARGV[2] token         claim token
-- ARGV[3] lease_ms      lease duration
-- Returns {0, lease_expiry_ms, payload} when claimed, {1} when another claim won or it is gone.
local activities_key, leases_key, tokens_key, payloads_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local item, token, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])

if redis.call('ZREM', activities_key, item) == 0 then return {1} end
local payload = redis.call('HGET', payloads_key, item)
if not payload then return {1} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + lease_ms
redis.call('ZADD', leases_key, expiry, 'a|' .. item)
redis.call('HSET', tokens_key, item, token)
return {0, expiry, payload}
