-- release_activity: put a claimed activity work item back in its queue (stream closed, Abandon).
--
-- Only the current claim can release: with a token that is not the item's, nothing changes.
--
-- KEYS[1] activities  partition activity queue zset
-- KEYS[2] leases      partition leases zset
-- KEYS[3] act_tokens  partition hash: item -> claim token
-- ARGV[3] item
-- ARGV[4] token       the claim token being handed back
-- Returns {OK}, or {LEASE_LOST} when the token is not the current claim.
local activities_key, leases_key, tokens_key = KEYS[1], KEYS[2], KEYS[3]
local item, token = ARGV[3], ARGV[4]

if redis.call('HGET', tokens_key, item) ~= token then return {CODE.LEASE_LOST} end
redis.call('ZREM', leases_key, lease_member(KIND.ACTIVITY, item))
redis.call('HDEL', tokens_key, item)
push_work(activities_key, item, now_ms())
return {CODE.OK}
