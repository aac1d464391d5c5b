-- terminate_instance: TerminateInstance's one atomic write.
--
-- Terminal instances are left as they are. One never dispatched (PENDING, or
-- SUSPENDED from PENDING) ends at once: status TERMINATED, out of due and ready,
-- its inbox moved to the history followed by the ExecutionTerminated event, `start`
-- pointed into the history, stats moved, completion indexed, status change published.
-- One already dispatched (RUNNING, or SUSPENDED from RUNNING) gets the event in its
-- inbox and is made ready: the engine applies it. A suspended one is RUNNING again for
-- that (dispatch is held while SUSPENDED; the SDKs apply a termination while suspended).
-- A termination is never refused for want of room. This script alone decides whether the
-- instance ends at once; a sub-orchestration ended at once tells its parent through the
-- outbox in the same step. The caller prepares that message (`notice`, from the instance it
-- read: execution `read_as`); if the instance is not the one it read (created again, rewound
-- since), nothing is written and CHANGED says to read again. A termination the relay passes
-- on carries its message id and is applied once (seen_before / remember).
-- With `force` (SkipGracefulOrchestrationTerminations), a dispatched one ends at once
-- too: its claim is dropped (a late completion is refused) and its timers with it.
--
-- KEYS[1] generation    partition generation key
-- KEYS[2] inst          instance hash
-- KEYS[3] inbox         instance inbox list
-- KEYS[4] hist          instance history list
-- KEYS[5] due           partition due zset
-- KEYS[6] ready         partition ready zset
-- KEYS[7] stats         partition status counts hash
-- KEYS[8] outbox        partition outbox list
-- KEYS[9] by_completed  partition completion index zset
-- KEYS[10] leases       partition leases zset
-- KEYS[11] timers       instance pending timers zset
-- KEYS[12] seen         instance zset of the message ids it took
-- KEYS[13] by_status    partition status index zset
-- ARGV[4] instance_id
-- ARGV[5] event       serialized ExecutionTerminated HistoryEvent
-- ARGV[6] has_output  "1" to store ARGV[7] as the output, "0" to leave it unset
-- ARGV[7] output
-- ARGV[8] notice      outbox message for the parent if this ends it at once ("" if it has no parent)
-- ARGV[9] force       "1" to end a dispatched instance at once too
-- ARGV[10] read_as    "<execution id>/<rewinds>" of the instance the caller read ("": not checked)
-- ARGV[11] message_id the id of the outbox message that asks for it, or ""
-- Returns {OK, status before}, {NOT_FOUND}, {DONE_BEFORE} (this message was applied before),
-- {CHANGED} (not the instance the caller read: nothing written) or {HUB_GONE}.
local inst_key, inbox_key, hist_key, due_key = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ready_key, stats_key, outbox_key, completed_key = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local instance_id, event, has_output, output = ARGV[4], ARGV[5], ARGV[6] == '1', ARGV[7]
local notice, force = ARGV[8], ARGV[9] == '1'
local leases_key, timers_key, seen_key, index_key = KEYS[10], KEYS[11], KEYS[12], KEYS[13]
local read_as, message_id = ARGV[10], ARGV[11]

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
if message_id ~= '' and seen_before(seen_key, message_id) then return {CODE.DONE_BEFORE} end
local h = redis.call('HMGET', inst_key, 'status', 'execution_id', 'rewinds')
local status = h[1]
if not status then return {CODE.NOT_FOUND} end
if TERMINAL[status] then return {CODE.OK, status} end
if read_as ~= '' and read_as ~= (h[2] or '') .. '/' .. (h[3] or '') then return {CODE.CHANGED} end
local now = now_ms()
if message_id ~= '' then remember(seen_key, message_id, now) end
local base = status == 'SUSPENDED' and redis.call('HGET', inst_key, 'prev_status') or status

if base == 'RUNNING' and force then
  drop_claim(leases_key, inst_key, instance_id)
  redis.call('DEL', timers_key)
elseif base == 'RUNNING' then
  if status == 'SUSPENDED' then
    redis.call('HSET', inst_key, 'status', 'RUNNING')
    redis.call('HDEL', inst_key, 'prev_status', 'due_ms')
    count_status(stats_key, index_key, inst_key, instance_id, 'SUSPENDED', 'RUNNING')
    wake(WAKE.STATUS, instance_id)
  end
  deliver(inst_key, inbox_key, ready_key, instance_id, 'RUNNING', event, now)
  return {CODE.OK, status}
end

inbox_to_history(inst_key, inbox_key, hist_key)
redis.call('RPUSH', hist_key, event)
redis.call('HSET', inst_key, 'status', 'TERMINATED', 'updated_ms', now, 'completed_ms', now)
redis.call('HINCRBY', inst_key, 'size', #event)
if has_output then redis.call('HSET', inst_key, 'output', output) end
redis.call('HDEL', inst_key, 'prev_status', 'due_ms')
redis.call('ZREM', due_key, instance_id)
redis.call('ZREM', ready_key, instance_id)
redis.call('ZADD', completed_key, now, instance_id)
count_status(stats_key, index_key, inst_key, instance_id, status, 'TERMINATED')
wake(WAKE.STATUS, instance_id)
if notice ~= '' then post_messages(outbox_key, {notice}, 1, 1) end
return {CODE.OK, status}
