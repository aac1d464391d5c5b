-- rewind_orchestration: apply a worker's rewind of an instance (its RewindOrchestrationAction),
-- only under the episode's current claim.
--
-- Checks, before writing anything, the claim token, the history limit and the next work
-- item (the new history and the events still pending). Then the history is replaced by
-- the new one (it holds the episode's OrchestratorStarted and ExecutionRewound events,
-- so the `claimed_n` handed-out events leave the inbox; events that arrived since stay),
-- `start` points at its ExecutionStarted event, and the fields its start event sets
-- (execution id, parent's execution id) are written. What the new history still waits for
-- and nothing would deliver any more (the instance had failed) is set going again in the
-- same step: activities queued, timers kept, and messages to sub-orchestrations written to
-- the outbox. The claim and the rewind mark go; the instance stays RUNNING and is made
-- ready, so that a worker replays the new history (unless it was suspended meanwhile:
-- then once it is resumed).
--
-- KEYS[1] generation     partition generation key
-- KEYS[2] inst           instance hash
-- KEYS[3] inbox          instance inbox list
-- KEYS[4] hist           instance history list
-- KEYS[5] ready          partition ready zset
-- KEYS[6] leases         partition leases zset
-- KEYS[7] activities     partition activity queue zset
-- KEYS[8] act_payloads   partition hash: activity item -> serialized ActivityRequest
-- KEYS[9] timers         instance pending timers zset
-- KEYS[10] due           partition due zset
-- KEYS[11] outbox        partition outbox list
-- ARGV[4] instance_id
-- ARGV[5] token          the claim token of the work item
-- ARGV[6] start_index    index of the ExecutionStarted event in the new history
-- ARGV[7] max_history    history events allowed (0: no limit)
-- ARGV[8] max_bytes      bytes of history and inbox allowed (0: no limit)
-- ARGV[9] f              how many instance hash field, value pairs follow
-- ARGV[10] n             how many history events follow the fields
-- ARGV[11] m             how many activity (item, request) pairs follow the events
-- ARGV[12] k             how many timer (fire time, event) pairs follow the activities
-- ARGV[13 .. 12+2f]      field, value pairs of the instance hash
-- then n                 the new history, serialized HistoryEvents
-- then 2m                activity item, serialized ActivityRequest pairs to queue
-- then 2k                fire time (ms), serialized TimerFired event pairs to keep
-- then the rest          outbox messages (protocol.OutboxMessage) for other instances
-- Returns {OK}; or, with nothing changed: {LEASE_LOST} when the token is not the current claim,
-- {HISTORY_LIMIT, events} or {TOO_LARGE, bytes} (the history or the next work item would pass its
-- limit), {HUB_GONE}.
local inst_key, inbox_key, hist_key, ready_key = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local leases_key, activities_key, payloads_key = KEYS[6], KEYS[7], KEYS[8]
local timers_key, due_key, outbox_key = KEYS[9], KEYS[10], KEYS[11]
local instance_id, token, start_index = ARGV[4], ARGV[5], tonumber(ARGV[6])
local max_history, max_bytes = tonumber(ARGV[7]), tonumber(ARGV[8])
local n_fields, n_events = tonumber(ARGV[9]), tonumber(ARGV[10])
local n_activities, n_timers = tonumber(ARGV[11]), tonumber(ARGV[12])
local first_event = 13 + 2 * n_fields
local last_event = first_event + n_events - 1
local first_activity = last_event + 1
local first_timer = first_activity + 2 * n_activities
local first_message = first_timer + 2 * n_timers

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
local claim = redis.call('HMGET', inst_key, 'lease', 'claimed_n', 'status')
if claim[1] ~= token then return {CODE.LEASE_LOST} end
local claimed_n, status = tonumber(claim[2]), claim[3]
if max_history > 0 and n_events > max_history then return {CODE.HISTORY_LIMIT, n_events} end
local size = bytes_of(ARGV, first_event, last_event) + bytes_of(redis.call('LRANGE', inbox_key, claimed_n, -1))
if max_bytes > 0 and size > max_bytes then return {CODE.TOO_LARGE, size} end
local now = now_ms()

redis.call('DEL', hist_key, timers_key)
rpush_all(hist_key, ARGV, first_event, last_event)
if claimed_n > 0 then redis.call('LTRIM', inbox_key, claimed_n, -1) end
redis.call('ZREM', due_key, instance_id)
drop_claim(leases_key, inst_key, instance_id)
redis.call('HDEL', inst_key, 'rewinding')
local previous = redis.call('HGET', inst_key, 'execution_id')
redis.call('HSET', inst_key, 'start', 'hist ' .. start_index, 'size', size, 'updated_ms', now,
  unpack(ARGV, 13, first_event - 1))
note_rewound(inst_key, previous, redis.call('HGET', inst_key, 'execution_id'))

post_messages(outbox_key, ARGV, first_message, #ARGV)
queue_activities(payloads_key, activities_key, ARGV, first_activity, first_timer - 1, now)
local suspended = status == 'SUSPENDED'  -- meanwhile: resume makes it ready, its claim arms the timers
keep_timers(timers_key, due_key, instance_id, ARGV, first_timer, first_message - 1, not suspended)
if not suspended then push_work(ready_key, instance_id, now) end
return {CODE.OK}
