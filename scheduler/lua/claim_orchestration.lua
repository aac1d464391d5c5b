-- claim_orchestration: hand one ready orchestration instance to a worker under a lease.
--
-- The instance leaves the ready set in this step, so of many replicas claiming
-- the same id at once exactly one gets it; the others find it gone and change
-- nothing. An instance that cannot run now (missing, terminal, SUSPENDED) is only
-- taken out of ready: whatever makes it runnable again re-adds it (resume, a new
-- event, a new instance with the same id). One that holds a live lease (an event
-- arrived during its episode) is taken out of ready too: the episode's completion
-- re-readies it when events remain past `claimed_n` (release and the lease sweep
-- always do). An expired lease not yet swept is taken over (its token stops
-- being current). The inbox is not consumed: the completion trims the first
-- `claimed_n` events, so an abandoned claim loses nothing. PENDING becomes RUNNING.
--
-- KEYS[1] ready   partition ready zset (score = ready since, ms)
-- KEYS[2] leases  partition leases zset (member "o|<id>", score = lease expiry, ms)
-- KEYS[3] inst    instance hash
-- KEYS[4] inbox   instance inbox list
-- KEYS[5] hist    instance history list
-- KEYS[6] stats   partition status counts hash
-- KEYS[7] timers  instance pending timers zset (TimerFired events, score = fire time ms)
-- KEYS[8] due     partition due zset
-- ARGV[1] instance_id
-- ARGV[2] token          claim token (opaque, made by the caller)
-- ARGV[3] lease_ms       lease duration
-- ARGV[4] episode_start  serialized OrchestratorStarted HistoryEvent handed to the worker
-- ARGV[5] channel        pub/sub channel for wake-ups
-- ARGV[6] hub            task hub name (for the wake-up message)
-- Returns {0, lease_expiry_ms, flat hash field/value list, history events, new events} when claimed,
-- {1} not ready (another claim won), {2} no such instance, {3, status} status cannot run now,
-- {4} the instance holds a live lease.
local ready_key, leases_key, inst_key = KEYS[1], KEYS[2], KEYS[3]
local inbox_key, hist_key, stats_key = KEYS[4], KEYS[5], KEYS[6]
local instance_id, token, lease_ms, episode_start = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local channel, hub = ARGV[5], ARGV[6]
local member = 'o|' .. instance_id
local idle = {COMPLETED = true, FAILED = true, TERMINATED = true, SUSPENDED = true}

if redis.call('ZREM', ready_key, instance_id) == 0 then return {1} end
local status = redis.call('HGET', inst_key, 'status')
if not status then return {2} end
if idle[status] then return {3, status} end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = redis.call('ZSCORE', leases_key, member)
if held and tonumber(held) > now then return {4} end

-- Timers whose time has come join the new events; the next one keeps the instance on due.
local timers_key, due_key = KEYS[7], KEYS[8]
local fired = redis.call('ZRANGEBYSCORE', timers_key, '-inf', now)
if #fired > 0 then
  redis.call('RPUSH', inbox_key, unpack(fired))
  redis.call('ZREMRANGEBYSCORE', timers_key, '-inf', now)
end
local next_timer = redis.call('ZRANGE', timers_key, 0, 0, 'WITHSCORES')
if next_timer[2] then redis.call('ZADD', due_key, 'LT', next_timer[2], instance_id) end

local expiry = now + lease_ms
local claimed_n = redis.call('LLEN', inbox_key)
redis.call('ZADD', leases_key, expiry, member)
redis.call('HSET', inst_key, 'lease', token, 'claimed_n', claimed_n, 'episode_start', episode_start)
if status == 'PENDING' then
  redis.call('HSET', inst_key, 'status', 'RUNNING', 'updated_ms', now)
  redis.call('HINCRBY', stats_key, 'PENDING', -1)
  redis.call('HINCRBY', stats_key, 'RUNNING', 1)
  redis.call('PUBLISH', channel, hub .. ' status ' .. instance_id)
end
local events = {}
if claimed_n > 0 then events = redis.call('LRANGE', inbox_key, 0, claimed_n - 1) end
return {0, expiry, redis.call('HGETALL', inst_key), redis.call('LRANGE', hist_key, 0, -1), events}
