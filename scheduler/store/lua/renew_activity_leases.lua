-- renew_activity_leases: extend the leases of activity work items still held by their claims.
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
  if redis.call('HGET', tokens_key, item) == token then
    redis.call('ZADD', leases_key, 'XX', expiry, lease_member(KIND.ACTIVITY, item))
    result[#result + 1] = item
  end
end
return result
