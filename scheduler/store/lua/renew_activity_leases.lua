-- renew_activity_leases: extend the leases of activity work items still held by their claims.
--
-- KEYS[1] leases      partition leases zset
-- KEYS[2] act_tokens  partition hash: item -> claim token
-- ARGV[3] lease_ms    new lease duration from now
-- ARGV[4..] item, token pairs (the caller bounds the batch)
-- Returns {OK, lease_expiry_ms, renewed items...} (a lost claim is reported by its absence).
local leases_key, tokens_key = KEYS[1], KEYS[2]
local lease_ms = tonumber(ARGV[3])

local expiry = now_ms() + lease_ms
local result = {CODE.OK, expiry}
for i = 4, #ARGV, 2 do
  local item, token = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', tokens_key, item) == token then
    redis.call('ZADD', leases_key, 'XX', expiry, lease_member(KIND.ACTIVITY, item))
    result[#result + 1] = item
  end
end
return result
