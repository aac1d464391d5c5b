-- renew_activity_leases: extend the leases of activity work items still held by their claims.
--
-- KEYS[1] leases      partition leases zset
-- KEYS[2] act_tokens  partition hash: item -> claim token
-- ARGV[1] lease_ms
-- ARGV[2..] item, token pairs
-- Returns the items renewed (a lost claim is reported by its absence).
local leases_key, tokens_key = KEYS[1], KEYS[2]
local lease_ms = tonumber(ARGV[1])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local renewed = {}
for i = 2, #ARGV, 2 do
  local item, token = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', tokens_key, item) == token then
    redis.call('ZADD', leases_key, 'XX', now + lease_ms, 'a|' .. item)
    renewed[#renewed + 1] = item
  end
end
return renewed
