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
-- keeps the instance on the due set. The inbox is not consumed: the completion trims
-- the first `claimed_n` events, so an abandoned claim loses nothing. PENDING becomes
-- RUNNING. While an instance is `rewinding` (see rewind_instance.lua), the episode gets
-- its ExecutionRewound event alone: the SDKs rewind only an episode of exactly that.
-- Everything is read and checked before the first write.
--
-- KEYS[1] generation  partition generation key
-- KEYS[2] ready       partition ready zset (score = ready since, ms)
-- KEYS[3] leases      partition leases zset (score = lease expiry, ms)
-- KEYS[4] inst        instance hash
-- KEYS[5] inbox       instance inbox list
-- KEYS[6] hist        instance history list
-- KEYS[7] stats       partition status counts hash
-- KEYS[8] timers      instance pending timers zset (TimerFired events, score = fire time ms)
-- KEYS[9] due         partition due zset
-- ARGV[4] instance_id
-- ARGV[5] token          claim token (opaque, made by the caller)
-- ARGV[6] lease_ms       lease duration
-- ARGV[7] episode_start  serialized OrchestratorStarted HistoryEvent handed to the worker
-- Returns {OK, lease_expiry_ms, flat hash field/value list, history events, new events} when claimed;
-- {NOT_READY} (another claim won), {NOT_FOUND}, {WRONG_STATUS, status} (it cannot run now),
-- {LEASED} (it is in an episode under a live lease) or {HUB_GONE}.
local ready_key, leases_key, inst_key, inbox_key = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local hist_key, stats_key, timers_key, due_key = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local instance_id, token, lease_ms, episode_start = ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7]
local member = lease_member(KIND.ORCHESTRATION, instance_id)

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
if not redis.call('ZSCORE', ready_key, instance_id) then return {CODE.NOT_READY} end
local h = redis.call('HMGET', inst_key, 'status', 'rewinding')
local status, rewinding = h[1], h[2]
local now = now_ms()
local held = redis.call('ZSCORE', leases_key, member)
local refusal = nil
if not status then
  refusal = {CODE.NOT_FOUND}
elseif IDLE[status] then
  refusal = {CODE.WRONG_STATUS, status}
elseif held and tonumber(held) > now then
  refusal = {CODE.LEASED}
end
redis.call('ZREM', ready_key, instance_id)
if refusal then return refusal end

local fired = redis.call('ZRANGEBYSCORE', timers_key, '-inf', now)
local next_timer = redis.call('ZRANGE', timers_key, #fired, #fired, 'WITHSCORES')  -- after the fired ones
if #fired > 0 then
  rpush_all(inbox_key, fired)
  redis.call('HINCRBY', inst_key, 'size', bytes_of(fired))
  redis.call('ZREMRANGEBYSCORE', timers_key, '-inf', now)
end
if next_timer[2] then
  add_due(due_key, instance_id, tonumber(next_timer[2]), false)
elseif #fired > 0 then
  redis.call('ZREM', due_key, instance_id)  -- a passed entry of a timer delivered now, not yet promoted
end

local expiry = now + lease_ms
local claimed_n = redis.call('LLEN', inbox_key)
if rewinding then claimed_n = math.min(claimed_n, 1) end
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
