-- terminate_instance: TerminateInstance's one atomic write.
--
-- Terminal instances are left as they are. One never dispatched (PENDING, or
-- SUSPENDED from PENDING) ends at once: status TERMINATED, out of due and ready,
-- its inbox moved to the history followed by the ExecutionTerminated event, `start`
-- pointed into the history, stats moved, status change published. One already
-- dispatched (RUNNING, or SUSPENDED from RUNNING) gets the event in its inbox and
-- is made ready: the engine applies it. A suspended one is RUNNING again for that
-- (dispatch is held while SUSPENDED; the SDKs apply a termination while suspended). A sub-orchestration ended at once tells
-- its parent through the outbox (the caller prepares that message: ARGV[7]).
--
-- KEYS[1] inst   instance hash
-- KEYS[2] inbox  instance inbox list
-- KEYS[3] hist   instance history list
-- KEYS[4] due    partition due zset
-- KEYS[5] ready  partition ready zset
-- KEYS[6] stats  partition status counts hash
-- KEYS[7] outbox partition outbox list
-- ARGV[1] instance_id
-- ARGV[2] event       serialized ExecutionTerminated HistoryEvent
-- ARGV[3] has_output  "1" to store ARGV[4] as the output, "0" to leave it unset
-- ARGV[4] output
-- ARGV[5] channel     pub/sub channel for wake-ups
-- ARGV[6] hub         task hub name (for the wake-up message)
-- ARGV[7] notice      outbox message for the parent if this ends it at once, or ""
-- Returns {0, status before}, or {2} if there is no such instance.
local inst_key, inbox_key, hist_key = KEYS[1], KEYS[2], KEYS[3]
local due_key, ready_key, stats_key = KEYS[4], KEYS[5], KEYS[6]
local instance_id, event, has_output, output = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4]
local channel, hub, notice = ARGV[5], ARGV[6], ARGV[7]

local status = redis.call('HGET', inst_key, 'status')
if not status then return {2} end
if status == 'COMPLETED' or status == 'FAILED' or status == 'TERMINATED' then return {0, status} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local base = status == 'SUSPENDED' and redis.call('HGET', inst_key, 'prev_status') or status

if base == 'RUNNING' then
  if status == 'SUSPENDED' then
    redis.call('HSET', inst_key, 'status', 'RUNNING')
    redis.call('HDEL', inst_key, 'prev_status', 'due_ms')
    redis.call('HINCRBY', stats_key, 'SUSPENDED', -1)
    redis.call('HINCRBY', stats_key, 'RUNNING', 1)
    redis.call('PUBLISH', channel, hub .. ' status ' .. instance_id)
  end
  redis.call('RPUSH', inbox_key, event)
  redis.call('HSET', inst_key, 'updated_ms', now)
  if redis.call('ZCARD', ready_key) == 0 then redis.call('PUBLISH', channel, hub .. ' work ' .. ready_key) end
  redis.call('ZADD', ready_key, 'NX', now, instance_id)
  return {0, status}
end

local offset = redis.call('LLEN', hist_key)
local pending = redis.call('LRANGE', inbox_key, 0, -1)
for i = 1, #pending, 1000 do
  redis.call('RPUSH', hist_key, unpack(pending, i, math.min(i + 999, #pending)))
end
redis.call('RPUSH', hist_key, event)
redis.call('DEL', inbox_key)
local index = string.match(redis.call('HGET', inst_key, 'start') or '', '^inbox (%d+)$')
if index then redis.call('HSET', inst_key, 'start', 'hist ' .. (offset + tonumber(index))) end
redis.call('HSET', inst_key, 'status', 'TERMINATED', 'updated_ms', now, 'completed_ms', now)
if has_output then redis.call('HSET', inst_key, 'output', output) end
redis.call('HDEL', inst_key, 'prev_status', 'due_ms')
redis.call('ZREM', due_key, instance_id)
redis.call('ZREM', ready_key, instance_id)
redis.call('HINCRBY', stats_key, status, -1)
redis.call('HINCRBY', stats_key, 'TERMINATED', 1)
redis.call('PUBLISH', channel, hub .. ' status ' .. instance_id)
if notice ~= '' then
  redis.call('RPUSH', KEYS[7], notice)
  redis.call('PUBLISH', channel, hub .. ' outbox -')
end
return {0, status}
