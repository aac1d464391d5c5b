-- complete_activity: deliver an activity's result to its orchestration, once.
--
-- Applied only while `token` is the item's current claim; the item's payload,
-- token and lease go in the same step, so a duplicate or late completion changes
-- nothing. The result event reaches the instance's inbox only if the instance is
-- still in the execution that scheduled it and has not ended; a running instance
-- is made ready (a suspended one keeps the event until it is resumed).
--
-- KEYS[1] act_tokens    partition hash: item -> claim token
-- KEYS[2] act_payloads  partition hash: item -> serialized ActivityRequest
-- KEYS[3] leases        partition leases zset
-- KEYS[4] inst          instance hash
-- KEYS[5] inbox         instance inbox list
-- KEYS[6] ready         partition ready zset
-- ARGV[1] item
-- ARGV[2] token
-- ARGV[3] instance_id
-- ARGV[4] execution_id  the execution that scheduled the activity
-- ARGV[5] event         serialized TaskCompleted or TaskFailed HistoryEvent
-- ARGV[6] channel       pub/sub channel ("<hub> work <ready key>" when the ready set stops being empty)
-- ARGV[7] hub
-- Returns {0} when applied, {1} when the token is not the current claim.
local tokens_key, payloads_key, leases_key = KEYS[1], KEYS[2], KEYS[3]
local inst_key, inbox_key, ready_key = KEYS[4], KEYS[5], KEYS[6]
local item, token, instance_id, execution_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local event, channel, hub = ARGV[5], ARGV[6], ARGV[7]

if redis.call('HGET', tokens_key, item) ~= token then return {1} end
redis.call('HDEL', tokens_key, item)
redis.call('HDEL', payloads_key, item)
redis.call('ZREM', leases_key, 'a|' .. item)

local inst = redis.call('HMGET', inst_key, 'status', 'execution_id')
local status = inst[1]
if not status or inst[2] ~= execution_id then return {0} end
if status == 'COMPLETED' or status == 'FAILED' or status == 'TERMINATED' then return {0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('RPUSH', inbox_key, event)
redis.call('HSET', inst_key, 'updated_ms', now)
if status == 'RUNNING' then
  if redis.call('ZCARD', ready_key) == 0 then redis.call('PUBLISH', channel, hub .. ' work ' .. ready_key) end
  redis.call('ZADD', ready_key, 'NX', now, instance_id)
end
return {0}
