-- sweep_activity_lease: re-queue one activity work item whose lease has expired (a step of the lease sweep).
--
-- Re-checks with Redis time that the lease is still expired, so one renewed or
-- released in between is left alone; then does what release_activity does with `keep`,
-- without a token (a completion under it is applied until the next claim takes the item).
-- Any replica may run it at any time; a second run finds nothing to do.
--
-- KEYS[1] generation  partition generation key
-- KEYS[2] activities  partition activity queue zset
-- KEYS[3] leases      partition leases zset
-- KEYS[4] act_tokens  partition hash: item -> claim token (not changed; passed as release_activity's)
-- ARGV[4] item
-- Returns {OK} when re-queued, {NOT_READY} when the lease is not expired or gone, or {HUB_GONE}.
local activities_key, leases_key = KEYS[2], KEYS[3]
local item = ARGV[4]
local member = lease_member(KIND.ACTIVITY, item)

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
local now = now_ms()
local expiry = redis.call('ZSCORE', leases_key, member)
if not expiry or tonumber(expiry) > now then return {CODE.NOT_READY} end
redis.call('ZREM', leases_key, member)
push_work(activities_key, item, now)
return {CODE.OK}
