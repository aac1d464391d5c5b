-- suspend_instance: SuspendInstance's one atomic write.
--
-- A PENDING or RUNNING instance becomes SUSPENDED: the previous status is kept in
-- `prev_status`, its due time (if it waits on the due set) in `due_ms`, and it is
-- taken out of due and ready so that nothing promotes or dispatches it until it is
-- resumed; an ExecutionSuspended event is appended to its inbox. Like the SDK's
-- reference backend, suspending a suspended instance is a no-op; so is suspending
-- a terminal one (it can never run again).
--
-- KEYS[1] inst   instance hash
-- KEYS[2] inbox  instance inbox list
-- KEYS[3] due    partition due zset
-- KEYS[4] ready  partition ready zset
-- KEYS[5] stats  partition status counts hash
-- ARGV[1] instance_id
-- ARGV[2] event    serialized ExecutionSuspended HistoryEvent
-- ARGV[3] channel  pub/sub channel for wake-ups
-- ARGV[4] hub      task hub name (for the wake-up message)
-- Returns {0, status before}, or {2} if there is no such instance.
local inst_key, inbox_key, due_key, ready_key, stats_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local instance_id, event, channel, hub = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local status = redis.call('HGET', inst_key, 'status')
if not status then
  return {2}
end
if status ~= 'PENDING' and status ~= 'RUNNING' then
  return {0, status}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local due_ms = redis.call('ZSCORE', due_key, instance_id)
if due_ms then
  redis.call('HSET', inst_key, 'due_ms', due_ms)
end
redis.call('ZREM', due_key, instance_id)
redis.call('ZREM', ready_key, instance_id)
redis.call('RPUSH', inbox_key, event)
redis.call('HSET', inst_key, 'status', 'SUSPENDED', 'prev_status', status, 'updated_ms', now)
redis.call('HINCRBY', stats_key, status, -1)
redis.call('HINCRBY', stats_key, 'SUSPENDED', 1)
redis.call('PUBLISH', channel, hub .. ' status ' .. instance_id)
return {0, status}
