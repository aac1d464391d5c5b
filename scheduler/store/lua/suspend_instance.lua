-- suspend_instance: SuspendInstance's one atomic write.
--
-- A PENDING or RUNNING instance becomes SUSPENDED: the previous status is kept in
-- `prev_status`, its due time (if it waits on the due set) in `due_ms`, and it is
-- taken out of due and ready so that nothing promotes or dispatches it until it is
-- resumed; an ExecutionSuspended event is appended to its inbox. Like the SDK's
-- reference backend, suspending a suspended instance is a no-op; so is suspending
-- a terminal one (it can never run again).
--
-- KEYS[1] generation  partition generation key
-- KEYS[2] inst        instance hash
-- KEYS[3] inbox       instance inbox list
-- KEYS[4] due         partition due zset
-- KEYS[5] ready       partition ready zset
-- KEYS[6] stats       partition status counts hash
-- KEYS[7] by_status   partition status index zset
-- ARGV[4] instance_id
-- ARGV[5] event       serialized ExecutionSuspended HistoryEvent
-- Returns {OK, status before}, {NOT_FOUND} or {HUB_GONE}.
local inst_key, inbox_key, due_key, ready_key, stats_key = KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local instance_id, event = ARGV[4], ARGV[5]

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
local status = redis.call('HGET', inst_key, 'status')
if not status then return {CODE.NOT_FOUND} end
if status ~= 'PENDING' and status ~= 'RUNNING' then return {CODE.OK, status} end

local due_ms = redis.call('ZSCORE', due_key, instance_id)
if due_ms then redis.call('HSET', inst_key, 'due_ms', due_ms) end
redis.call('ZREM', due_key, instance_id)
redis.call('ZREM', ready_key, instance_id)
redis.call('RPUSH', inbox_key, event)
redis.call('HINCRBY', inst_key, 'size', #event)
redis.call('HSET', inst_key, 'status', 'SUSPENDED', 'prev_status', status, 'updated_ms', now_ms())
count_status(stats_key, KEYS[7], inst_key, instance_id, status, 'SUSPENDED')
wake(WAKE.STATUS, instance_id)
return {CODE.OK, status}
