-- resume_instance: ResumeInstance's one atomic write.
--
-- A SUSPENDED instance gets back its previous status and an ExecutionResumed
-- event in its inbox. It returns to the due set at its remembered due time if that
-- is still ahead; otherwise, and always when it had been RUNNING, it is made ready.
-- Like the SDK's reference backend, resuming an instance that is not suspended is
-- accepted; there is nothing to resume, so nothing is written.
--
-- KEYS[1] generation  partition generation key
-- KEYS[2] inst        instance hash
-- KEYS[3] inbox       instance inbox list
-- KEYS[4] due         partition due zset
-- KEYS[5] ready       partition ready zset
-- KEYS[6] stats       partition status counts hash
-- KEYS[7] by_status   partition status index zset
-- ARGV[4] instance_id
-- ARGV[5] event       serialized ExecutionResumed HistoryEvent
-- Returns {OK, status before}, {NOT_FOUND} or {HUB_GONE}.
local inst_key, inbox_key, due_key, ready_key, stats_key = KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local instance_id, event = ARGV[4], ARGV[5]

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
local h = redis.call('HMGET', inst_key, 'status', 'prev_status', 'due_ms')
local status, prev, due_ms = h[1], h[2] or 'PENDING', tonumber(h[3])
if not status then return {CODE.NOT_FOUND} end
if status ~= 'SUSPENDED' then return {CODE.OK, status} end

local now = now_ms()
redis.call('RPUSH', inbox_key, event)
redis.call('HINCRBY', inst_key, 'size', #event)
redis.call('HSET', inst_key, 'status', prev, 'updated_ms', now)
redis.call('HDEL', inst_key, 'prev_status', 'due_ms')
count_status(stats_key, KEYS[7], inst_key, instance_id, 'SUSPENDED', prev)
local waits = due_ms and due_ms > now
if waits then add_due(due_key, instance_id, due_ms, false) end
if not waits or prev == 'RUNNING' then push_work(ready_key, instance_id, now) end
wake(WAKE.STATUS, instance_id)
return {CODE.OK, status}
