-- release_orchestration: hand a claimed orchestration back (stream closed, Abandon).
--
-- Only the current claim can release: with a token that is not the instance's
-- `lease` nothing changes. The lease and the claim fields go; the events are
-- still in the inbox, so the instance is made ready again (keeping an earlier
-- ready time) unless its status cannot run now (terminal, SUSPENDED): whatever
-- makes it runnable again re-adds it.
--
-- KEYS[1] leases  partition leases zset (member "o|<id>", score = lease expiry, ms)
-- KEYS[2] ready   partition ready zset (score = ready since, ms)
-- KEYS[3] inst    instance hash
-- ARGV[1] instance_id
-- ARGV[2] token   the claim token being handed back
-- Returns {0, status} when released, {1} when the token is not the current claim.
local leases_key, ready_key, inst_key = KEYS[1], KEYS[2], KEYS[3]
local instance_id, token = ARGV[1], ARGV[2]
local idle = {COMPLETED = true, FAILED = true, TERMINATED = true, SUSPENDED = true}

local h = redis.call('HMGET', inst_key, 'lease', 'status')
local lease, status = h[1], h[2]
if lease ~= token then return {1} end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', leases_key, 'o|' .. instance_id)
redis.call('HDEL', inst_key, 'lease', 'claimed_n', 'episode_start')
if not idle[status] then
  redis.call('ZADD', ready_key, 'NX', now, instance_id)
end
return {0, status}
