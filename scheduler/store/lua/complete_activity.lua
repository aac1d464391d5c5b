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
-- ARGV[3] item
-- ARGV[4] token
-- ARGV[5] instance_id
-- ARGV[6] execution_id  the execution that scheduled the activity
-- ARGV[7] event         serialized TaskCompleted or TaskFailed HistoryEvent
-- Returns {OK} when applied, {LEASE_LOST} when the token is not the current claim.
local tokens_key, payloads_key, leases_key = KEYS[1], KEYS[2], KEYS[3]
local inst_key, inbox_key, ready_key = KEYS[4], KEYS[5], KEYS[6]
local item, token, instance_id, execution_id, event = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]

if redis.call('HGET', tokens_key, item) ~= token then return {CODE.LEASE_LOST} end
redis.call('HDEL', tokens_key, item)
redis.call('HDEL', payloads_key, item)
redis.call('ZREM', leases_key, lease_member(KIND.ACTIVITY, item))

local inst = redis.call('HMGET', inst_key, 'status', 'execution_id')
local status = inst[1]
if status and inst[2] == execution_id and not TERMINAL[status] then
  deliver(inst_key, inbox_key, ready_key, instance_id, status, event, now_ms())
end
return {CODE.OK}
