-- renew_activity_leases: extend the leases of activity work items still held by their claims.
--
-- A lease is extended only while the token is the item's claim and its lease is on the
-- leases zset (an item handed back keeps its token until the next claim, without a lease).
--
-- KEYS[1] generation  partition generation key
-- KEYS[2] leases      partition leases zset
-- KEYS[3] act_tokens  partition hash: item -> claim token
-- ARGV[4] lease_ms    new lease duration from now
-- ARGV[5..] item, token pairs (the caller bounds the batch)
-- Returns {OK, lease_expiry_ms, renewed items...} (a lost claim is reported by its absence), or {HUB_GONE}.
local leases_key, tokens_key = KEYS[2], KEYS[3]
local lease_ms = tonumber(ARGV[4])

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
local expiry = now_ms() + lease_ms
local result = {CODE.OK, expiry}
for i = 5, #ARGV, 2 do
  local item, token = ARGV[i], ARGV[i + 1]
  local member = lease_member(KIND.ACTIVITY, item)
  if redis.call('HGET', tokens_key, item) == token and redis.call('ZSCORE', leases_key, member) then
    redis.call('ZADD', leases_key, 'XX', expiry, member)
    result[#result + 1] = item
  end
end
return result
