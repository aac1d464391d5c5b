-- complete_orchestration: apply a worker's episode result, only under its current claim.
--
-- Checks the claim token; moves the OrchestratorStarted event handed out and the
-- `claimed_n` delivered inbox events, then the events of the worker's actions, to
-- the history (keeping the `start` pointer right); drops the lease; applies the
-- custom status and, when the episode ended the orchestration, its final status,
-- output and failure; queues the activities the episode scheduled. Events that arrived during the episode stay in the inbox and
-- make the instance ready again.
--
-- KEYS[1] inst    instance hash
-- KEYS[2] inbox   instance inbox list
-- KEYS[3] hist    instance history list
-- KEYS[4] ready   partition ready zset
-- KEYS[5] leases  partition leases zset
-- KEYS[6] stats   partition status counts hash
-- KEYS[7] activities    partition activity queue zset
-- KEYS[8] act_payloads  partition hash: activity item -> serialized ActivityRequest
-- KEYS[9] timers        instance pending timers zset
-- KEYS[10] due          partition due zset
-- KEYS[11] outbox       partition outbox list (messages for other instances, delivered by the relay)
-- ARGV[1] instance_id
-- ARGV[2] token          the claim token of the work item
-- ARGV[3] status         final status name, or "" if the orchestration goes on
-- ARGV[4] output         "" or "=<output>" (a leading "=" marks a value, so "" can mean unset)
-- ARGV[5] failure        serialized TaskFailureDetails, or ""
-- ARGV[6] custom_status  "" or "=<custom status>"
-- ARGV[7] channel        pub/sub channel for wake-ups
-- ARGV[8] hub            task hub name (for the wake-up message)
-- ARGV[9] n       how many history events follow
-- ARGV[10] m      how many activity (item, request) pairs follow the events
-- ARGV[11] k      how many timer (fire time, event) pairs follow the activities
-- ARGV[12] max_history  history events allowed (0: no limit)
-- ARGV[13 .. 12+n]            history events of the worker's actions, serialized
-- then 2m                     activity item, serialized ActivityRequest pairs to queue
-- then 2k                     fire time (ms), serialized TimerFired event pairs of new timers
-- then the rest               outbox messages (see relay.py) for other instances
-- Returns {0} when applied, {1} when the token is not the current claim, {2, size} when the history
-- would grow past max_history (in both cases nothing changed).
local inst_key, inbox_key, hist_key = KEYS[1], KEYS[2], KEYS[3]
local ready_key, leases_key, stats_key = KEYS[4], KEYS[5], KEYS[6]
local instance_id, token, status, output = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local failure, custom_status, channel, hub = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local activities_key, payloads_key = KEYS[7], KEYS[8]
local timers_key, due_key = KEYS[9], KEYS[10]
local n_events, n_activities, n_timers = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local max_history = tonumber(ARGV[12])
local first_activity = 13 + n_events
local first_timer = first_activity + 2 * n_activities
local first_message = first_timer + 2 * n_timers

local claim = redis.call('HMGET', inst_key, 'lease', 'claimed_n', 'episode_start', 'start', 'status')
if claim[1] ~= token then return {1} end
local claimed_n, episode_start, start, old_status = tonumber(claim[2]), claim[3], claim[4], claim[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local offset = redis.call('LLEN', hist_key)
local would_be = offset + 1 + claimed_n + n_events
if max_history > 0 and would_be > max_history then return {2, would_be} end
redis.call('RPUSH', hist_key, episode_start)
if claimed_n > 0 then
  local delivered = redis.call('LRANGE', inbox_key, 0, claimed_n - 1)
  for i = 1, #delivered, 1000 do
    redis.call('RPUSH', hist_key, unpack(delivered, i, math.min(i + 999, #delivered)))
  end
  redis.call('LTRIM', inbox_key, claimed_n, -1)
end
for i = 13, 12 + n_events, 1000 do
  redis.call('RPUSH', hist_key, unpack(ARGV, i, math.min(i + 999, 12 + n_events)))
end
for i = first_message, #ARGV do
  redis.call('RPUSH', KEYS[11], ARGV[i])
end
if #ARGV >= first_message then redis.call('PUBLISH', channel, hub .. ' outbox -') end
if n_activities > 0 and redis.call('ZCARD', activities_key) == 0 then
  redis.call('PUBLISH', channel, hub .. ' work ' .. activities_key)  -- idle work streams wake up
end
for i = first_activity, first_timer - 1, 2 do
  redis.call('HSET', payloads_key, ARGV[i], ARGV[i + 1])
  redis.call('ZADD', activities_key, 'NX', now, ARGV[i])
end
for i = first_timer, first_message - 1, 2 do
  local fire_ms = tonumber(ARGV[i])
  redis.call('ZADD', timers_key, fire_ms, ARGV[i + 1])
  local head = redis.call('ZRANGE', due_key, 0, 0, 'WITHSCORES')
  redis.call('ZADD', due_key, 'LT', fire_ms, instance_id)
  if not head[2] or fire_ms < tonumber(head[2]) then
    redis.call('PUBLISH', channel, hub .. ' due ' .. fire_ms .. ' ' .. due_key)
  end
end
local index = start and tonumber(string.match(start, '^inbox (%d+)$'))
if index then
  local moved = index < claimed_n
  redis.call('HSET', inst_key, 'start', moved and ('hist ' .. (offset + 1 + index)) or ('inbox ' .. (index - claimed_n)))
end

redis.call('ZREM', leases_key, 'o|' .. instance_id)
redis.call('HDEL', inst_key, 'lease', 'claimed_n', 'episode_start')
redis.call('HSET', inst_key, 'updated_ms', now)
if custom_status ~= '' then redis.call('HSET', inst_key, 'custom_status', string.sub(custom_status, 2)) end

if status ~= '' then
  redis.call('HSET', inst_key, 'status', status, 'completed_ms', now)
  if output ~= '' then redis.call('HSET', inst_key, 'output', string.sub(output, 2)) end
  if failure ~= '' then redis.call('HSET', inst_key, 'failure', failure) end
  redis.call('HINCRBY', stats_key, old_status, -1)
  redis.call('HINCRBY', stats_key, status, 1)
  redis.call('ZREM', ready_key, instance_id)
  redis.call('ZREM', due_key, instance_id)
  redis.call('DEL', timers_key)
  redis.call('PUBLISH', channel, hub .. ' status ' .. instance_id)
elseif redis.call('LLEN', inbox_key) > 0 then
  redis.call('ZADD', ready_key, 'NX', now, instance_id)
end
return {0}
