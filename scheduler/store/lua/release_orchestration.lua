-- release_orchestration: hand a claimed orchestration back (stream closed, Abandon).
--
-- Only the claim's token can release: with a token that is not the instance's `lease`
-- nothing changes. The lease goes; the events are still in the inbox, so the instance
-- is queued again (keeping an earlier ready time) unless its status cannot run now
-- (terminal, SUSPENDED): whatever makes it runnable again re-adds it. With `keep` (its
-- stream closed: the worker may still report), the claim's fields stay, so a completion
-- under the token is applied until the next claim takes the instance (see
-- complete_orchestration.lua); without (Abandon: the worker gave up), they go too.
--
-- KEYS[1] generation  partition generation key
-- KEYS[2] leases      partition leases zset (score = lease expiry, ms)
-- KEYS[3] ready       partition ready zset (score = ready since, ms)
-- KEYS[4] inst        instance hash
-- ARGV[4] instance_id
-- ARGV[5] token       the claim token being handed back
-- ARGV[6] keep        "1": the token stays acceptable until the next claim; "0": it is refused from now on
-- Returns {OK, status} when released, {LEASE_LOST} when the token is not the instance's claim, or {HUB_GONE}.
local leases_key, ready_key, inst_key = KEYS[2], KEYS[3], KEYS[4]
local instance_id, token, keep = ARGV[4], ARGV[5], ARGV[6] == '1'

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
local h = redis.call('HMGET', inst_key, 'lease', 'status')
local lease, status = h[1], h[2]
if lease ~= token then return {CODE.LEASE_LOST} end
if keep then
  redis.call('ZREM', leases_key, lease_member(KIND.ORCHESTRATION, instance_id))
else
  drop_claim(leases_key, inst_key, instance_id)
end
if not IDLE[status] then push_work(ready_key, instance_id, now_ms()) end
return {CODE.OK, status}
