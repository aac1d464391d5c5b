-- release_activity: put a claimed activity work item back in the queue.
--
-- Mode "token" (abandon, or the stream closed): only while `token` is the item's
-- current claim. Mode "expired" (the lease sweep, any replica): only while the
-- lease is expired by Redis time, so one renewed in between is left alone.
--
-- KEYS[1] activities  partition activity queue zset
-- KEYS[2] leases      partition leases zset
-- KEYS[3] act_tokens  partition hash: item -> claim token
-- ARGV[1] item
-- ARGV[2] mode        "token" or "expired"
-- ARGV[3] token       the claim token (mode "token")
-- Returns {0} when released, {1} when nothing changed.
local activities_key, leases_key, tokens_key = KEYS[1], KEYS[2], KEYS[3]
local item, mode, token = ARGV[1], ARGV[2], ARGV[3]
local member = 'a|' .. item

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if mode == 'token' then
  if redis.call('HGET', tokens_key, item) ~= token then return {1} end
else
  local expiry = redis.call('ZSCORE', leases_key, member)
  if not expiry or tonumber(expiry) > now then return {1} end
end
redis.call('ZREM', leases_key, member)
redis.call('HDEL', tokens_key, item)
redis.call('ZADD', activities_key, 'NX', now, item)
return {0}
