-- release_activity: put a claimed activity work item back in its queue (stream closed, Abandon).
--
-- Only the claim's token can release: with a token that is not the item's, nothing changes.
-- With `keep` (its stream closed: the worker may still report), the token stays, so a
-- completion under it is applied until the next claim takes the item (see
-- complete_activity.lua); without (Abandon: the worker gave up), it goes too.
--
-- KEYS[1] generation  partition generation key
-- KEYS[2] activities  partition activity queue zset
-- KEYS[3] leases      partition leases zset
-- KEYS[4] act_tokens  partition hash: item -> claim token
-- ARGV[4] item
-- ARGV[5] token       the claim token being handed back
-- ARGV[6] keep        "1": the token stays acceptable until the next claim; "0": it is refused from now on
-- Returns {OK}, {LEASE_LOST} when the token is not the item's claim, or {HUB_GONE}.
local activities_key, leases_key, tokens_key = KEYS[2], KEYS[3], KEYS[4]
local item, token, keep = ARGV[4], ARGV[5], ARGV[6] == '1'

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
if redis.call('HGET', tokens_key, item) ~= token then return {CODE.LEASE_LOST} end
redis.call('ZREM', leases_key, lease_member(KIND.ACTIVITY, item))
if not keep then redis.call('HDEL', tokens_key, item) end
push_work(activities_key, item, now_ms())
return {CODE.OK}
