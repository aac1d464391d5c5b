-- complete_orchestration: apply a worker's episode result, only under its current claim.
--
-- Checks the claim token and the history limit before writing anything. Moves the
-- OrchestratorStarted event handed out and the `claimed_n` delivered inbox events,
-- then the events of the worker's actions, to the history (keeping `start` right);
-- writes the outbox messages; queues the activities and arms the timers the episode
-- scheduled; drops the claim; applies the custom status and, when the episode ended
-- the orchestration, its final status, output and failure. Events that arrived
-- during the episode stay in the inbox and make the instance ready again, unless it
-- was suspended meanwhile (then it stays out of ready and due until it is resumed).
--
-- KEYS[1] inst          instance hash
-- KEYS[2] inbox         instance inbox list
-- KEYS[3] hist          instance history list
-- KEYS[4] ready         partition ready zset
-- KEYS[5] leases        partition leases zset
-- KEYS[6] stats         partition status counts hash
-- KEYS[7] activities    partition activity queue zset
-- KEYS[8] act_payloads  partition hash: activity item -> serialized ActivityRequest
-- KEYS[9] timers        instance pending timers zset
-- KEYS[10] due          partition due zset
-- KEYS[11] outbox       partition outbox list (messages for other instances, delivered by the relay)
-- ARGV[3] instance_id
-- ARGV[4] token          the claim token of the work item
-- ARGV[5] status         final status name, or "" if the orchestration goes on
-- ARGV[6] output         "" or "=<output>" (a leading "=" marks a value, so "" can mean unset)
-- ARGV[7] failure        serialized TaskFailureDetails, or ""
-- ARGV[8] custom_status  "" or "=<custom status>"
-- ARGV[9] n              how many history events follow
-- ARGV[10] m             how many activity (item, request) pairs follow the events
-- ARGV[11] k             how many timer (fire time, event) pairs follow the activities
-- ARGV[12] max_history   history events allowed (0: no limit)
-- ARGV[13 .. 12+n]       history events of the worker's actions, serialized
-- then 2m                activity item, serialized ActivityRequest pairs to queue
-- then 2k                fire time (ms), serialized TimerFired event pairs of new timers
-- then the rest          outbox messages (protocol.OutboxMessage) for other instances
-- Returns {OK}, {LEASE_LOST} when the token is not the current claim, {HISTORY_LIMIT, size} when
-- the history would grow past max_history (in both cases nothing changed).
local inst_key, inbox_key, hist_key, ready_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local leases_key, stats_key, activities_key, payloads_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local timers_key, due_key, outbox_key = KEYS[9], KEYS[10], KEYS[11]
local instance_id, token, status, output = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local failure, custom_status = ARGV[7], ARGV[8]
local n_events, n_activities, n_timers = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local max_history = tonumber(ARGV[12])
local first_activity = 13 + n_events
local first_timer = first_activity + 2 * n_activities
local first_message = first_timer + 2 * n_timers

local claim = redis.call('HMGET', inst_key, 'lease', 'claimed_n', 'episode_start', 'start', 'status')
if claim[1] ~= token then return {CODE.LEASE_LOST} end
local claimed_n, episode_start, start, old_status = tonumber(claim[2]), claim[3], claim[4], claim[5]
local offset = redis.call('LLEN', hist_key)
local would_be = offset + 1 + claimed_n + n_events
if max_history > 0 and would_be > max_history then return {CODE.HISTORY_LIMIT, would_be} end
local now = now_ms()

redis.call('RPUSH', hist_key, episode_start)
if claimed_n > 0 then
  rpush_all(hist_key, redis.call('LRANGE', inbox_key, 0, claimed_n - 1))
  redis.call('LTRIM', inbox_key, claimed_n, -1)
end
rpush_all(hist_key, ARGV, 13, 12 + n_events)
local index = start and tonumber(string.match(start, '^inbox (%d+)$'))
if index then
  local moved = index < claimed_n
  redis.call('HSET', inst_key, 'start', moved and ('hist ' .. (offset + 1 + index)) or ('inbox ' .. (index - claimed_n)))
end

if #ARGV >= first_message then
  rpush_all(outbox_key, ARGV, first_message, #ARGV)
  wake('outbox', '-')
end
for i = first_activity, first_timer - 1, 2 do
  redis.call('HSET', payloads_key, ARGV[i], ARGV[i + 1])
  push_work(activities_key, ARGV[i], now)
end
local suspended = old_status == 'SUSPENDED'  -- meanwhile: resume makes it ready, its claim arms the timers
for i = first_timer, first_message - 1, 2 do
  redis.call('ZADD', timers_key, ARGV[i], ARGV[i + 1])
  if not suspended then add_due(due_key, instance_id, tonumber(ARGV[i]), true) end
end

drop_claim(leases_key, inst_key, instance_id)
redis.call('HSET', inst_key, 'updated_ms', now)
if custom_status ~= '' then redis.call('HSET', inst_key, 'custom_status', string.sub(custom_status, 2)) end
if status ~= '' then
  redis.call('HSET', inst_key, 'status', status, 'completed_ms', now)
  if output ~= '' then redis.call('HSET', inst_key, 'output', string.sub(output, 2)) end
  if failure ~= '' then redis.call('HSET', inst_key, 'failure', failure) end
  redis.call('HDEL', inst_key, 'prev_status', 'due_ms')  -- suspended meanwhile: it ended all the same
  count_status(stats_key, old_status, status)
  redis.call('ZREM', ready_key, instance_id)
  redis.call('ZREM', due_key, instance_id)
  redis.call('DEL', timers_key)
  wake('status', instance_id)
elseif not suspended and redis.call('LLEN', inbox_key) > 0 then
  push_work(ready_key, instance_id, now)
end
return {CODE.OK}
