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
-- being current). Timers whose time has come join the inbox; the next one (only)
-- keeps the instance on the due set. The inbox is not consumed: the completion trims the
-- first `claimed_n` events, so an abandoned claim loses nothing. PENDING becomes RUNNING.
--
-- KEYS[1] ready   partition ready zset (score = ready since, ms)
-- KEYS[2] leases  partition leases zset (score = lease expiry, ms)
-- KEYS[3] inst    instance hash
-- KEYS[4] inbox   instance inbox list
-- KEYS[5] hist    instance history list
-- KEYS[6] stats   partition status counts hash
-- KEYS[7] timers  instance pending timers zset (TimerFired events, score = fire time ms)
-- KEYS[8] due     partition due zset
-- ARGV[3] instance_id
-- ARGV[4] token          claim token (opaque, made by the caller)
-- ARGV[5] lease_ms       lease duration
-- ARGV[6] episode_start  serialized OrchestratorStarted HistoryEvent handed to the worker
-- Returns {OK, lease_expiry_ms, flat hash field/value list, history events, new events} when claimed;
-- {NOT_READY} (another claim won), {NOT_FOUND}, {WRONG_STATUS, status} (it cannot run now) or
-- {LEASED} (it is in an episode under a live lease).
local ready_key, leases_key, inst_key, inbox_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local hist_key, stats_key, timers_key, due_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local instance_id, token, lease_ms, episode_start = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local member = lease_member(KIND.ORCHESTRATION, instance_id)

if redis.call('ZREM', ready_key, instance_id) == 0 then return {CODE.NOT_READY} end
local status = redis.call('HGET', inst_key, 'status')
if not status then return {CODE.NOT_FOUND} end
if IDLE[status] then return {CODE.WRONG_STATUS, status} end
local now = now_ms()
local held = redis.call('ZSCORE', leases_key, member)
if held and tonumber(held) > now then return {CODE.LEASED} end

local fired = redis.call('ZRANGEBYSCORE', timers_key, '-inf', now)
if #fired > 0 then
  rpush_all(inbox_key, fired)
  redis.call('ZREMRANGEBYSCORE', timers_key, '-inf', now)
end
local next_timer = redis.call('ZRANGE', timers_key, 0, 0, 'WITHSCORES')
if next_timer[2] then
  add_due(due_key, instance_id, tonumber(next_timer[2]), false)
elseif #fired > 0 then
  redis.call('ZREM', due_key, instance_id)  -- a passed entry of a timer delivered now, not yet promoted
end

local expiry = now + lease_ms
local claimed_n = redis.call('LLEN', inbox_key)
redis.call('ZADD', leases_key, expiry, member)
redis.call('HSET', inst_key, 'lease', token, 'claimed_n', claimed_n, 'episode_start', episode_start)
if status == 'PENDING' then
  redis.call('HSET', inst_key, 'status', 'RUNNING', 'updated_ms', now)
  count_status(stats_key, 'PENDING', 'RUNNING')
  wake('status', instance_id)
end
local events = {}
if claimed_n > 0 then events = redis.call('LRANGE', inbox_key, 0, claimed_n - 1) end
return {CODE.OK, expiry, redis.call('HGETALL', inst_key), redis.call('LRANGE', hist_key, 0, -1), events}
