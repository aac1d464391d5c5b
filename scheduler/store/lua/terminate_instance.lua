-- terminate_instance: TerminateInstance's one atomic write.
--
-- Terminal instances are left as they are. One never dispatched (PENDING, or
-- SUSPENDED from PENDING) ends at once: status TERMINATED, out of due and ready,
-- its inbox moved to the history followed by the ExecutionTerminated event, `start`
-- pointed into the history, stats moved, status change published. One already
-- dispatched (RUNNING, or SUSPENDED from RUNNING) gets the event in its inbox and
-- is made ready: the engine applies it. A suspended one is RUNNING again for that
-- (dispatch is held while SUSPENDED; the SDKs apply a termination while suspended).
-- A sub-orchestration ended at once tells its parent through the outbox (the caller
-- prepares that message: `notice`).
--
-- KEYS[1] inst    instance hash
-- KEYS[2] inbox   instance inbox list
-- KEYS[3] hist    instance history list
-- KEYS[4] due     partition due zset
-- KEYS[5] ready   partition ready zset
-- KEYS[6] stats   partition status counts hash
-- KEYS[7] outbox  partition outbox list
-- ARGV[3] instance_id
-- ARGV[4] event       serialized ExecutionTerminated HistoryEvent
-- ARGV[5] has_output  "1" to store ARGV[6] as the output, "0" to leave it unset
-- ARGV[6] output
-- ARGV[7] notice      outbox message for the parent if this ends it at once, or ""
-- Returns {OK, status before}, or {NOT_FOUND}.
local inst_key, inbox_key, hist_key = KEYS[1], KEYS[2], KEYS[3]
local due_key, ready_key, stats_key, outbox_key = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local instance_id, event, has_output, output = ARGV[3], ARGV[4], ARGV[5] == '1', ARGV[6]
local notice = ARGV[7]

local status = redis.call('HGET', inst_key, 'status')
if not status then return {CODE.NOT_FOUND} end
if TERMINAL[status] then return {CODE.OK, status} end
local now = now_ms()
local base = status == 'SUSPENDED' and redis.call('HGET', inst_key, 'prev_status') or status

if base == 'RUNNING' then
  if status == 'SUSPENDED' then
    redis.call('HSET', inst_key, 'status', 'RUNNING')
    redis.call('HDEL', inst_key, 'prev_status', 'due_ms')
    count_status(stats_key, 'SUSPENDED', 'RUNNING')
    wake('status', instance_id)
  end
  deliver(inst_key, inbox_key, ready_key, instance_id, 'RUNNING', event, now)
  return {CODE.OK, status}
end

local offset = redis.call('LLEN', hist_key)
rpush_all(hist_key, redis.call('LRANGE', inbox_key, 0, -1))
redis.call('RPUSH', hist_key, event)
redis.call('DEL', inbox_key)
local index = string.match(redis.call('HGET', inst_key, 'start') or '', '^inbox (%d+)$')
if index then redis.call('HSET', inst_key, 'start', 'hist ' .. (offset + tonumber(index))) end
redis.call('HSET', inst_key, 'status', 'TERMINATED', 'updated_ms', now, 'completed_ms', now)
if has_output then redis.call('HSET', inst_key, 'output', output) end
redis.call('HDEL', inst_key, 'prev_status', 'due_ms')
redis.call('ZREM', due_key, instance_id)
redis.call('ZREM', ready_key, instance_id)
count_status(stats_key, status, 'TERMINATED')
wake('status', instance_id)
if notice ~= '' then
  redis.call('RPUSH', outbox_key, notice)
  wake('outbox', '-')
end
return {CODE.OK, status}
