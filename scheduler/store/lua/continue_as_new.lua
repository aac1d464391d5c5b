-- continue_as_new: end an execution by starting the next one, under the episode's claim.
--
-- Checks the claim token and that the next work item fits; drops the history, the
-- pending timers and the delivered inbox events of the ending execution; puts the new
-- execution's ExecutionStarted event and the carried-over events at the head of the
-- inbox (events that arrived during the episode follow them); records the new
-- execution id; writes the outbox messages the ending execution sent (an entity unlock,
-- a signal); drops the claim and makes the instance ready, so the new execution starts
-- at once (unless it was suspended meanwhile: then when it is resumed).
--
-- KEYS[1] generation  partition generation key
-- KEYS[2] inst        instance hash
-- KEYS[3] inbox       instance inbox list
-- KEYS[4] hist        instance history list
-- KEYS[5] ready       partition ready zset
-- KEYS[6] leases      partition leases zset
-- KEYS[7] timers      instance pending timers zset
-- KEYS[8] due         partition due zset
-- KEYS[9] outbox      partition outbox list
-- ARGV[4] instance_id
-- ARGV[5] token          the claim token of the work item
-- ARGV[6] execution_id   the new execution's id
-- ARGV[7] custom_status  "" or "=<custom status>"
-- ARGV[8] max_bytes      bytes of inbox allowed (0: no limit)
-- ARGV[9] n              how many events follow
-- ARGV[10 .. 9+n]        the new ExecutionStarted event, then the carried-over events, serialized
-- then the rest          outbox messages (protocol.OutboxMessage)
-- Returns {OK}; or, with nothing changed: {LEASE_LOST} when the token is not the current claim,
-- {TOO_LARGE, bytes} when the next work item would not fit, {HUB_GONE}.
local inst_key, inbox_key, hist_key, ready_key = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local leases_key, timers_key, due_key, outbox_key = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local instance_id, token, execution_id, custom_status = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local max_bytes, last_event = tonumber(ARGV[8]), 9 + tonumber(ARGV[9])

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
local claim = redis.call('HMGET', inst_key, 'lease', 'claimed_n', 'status')
if claim[1] ~= token then return {CODE.LEASE_LOST} end
local claimed_n, status = tonumber(claim[2]), claim[3]
local size = bytes_of(ARGV, 10, last_event) + bytes_of(redis.call('LRANGE', inbox_key, claimed_n, -1))
if max_bytes > 0 and size > max_bytes then return {CODE.TOO_LARGE, size} end
local now = now_ms()

if claimed_n > 0 then redis.call('LTRIM', inbox_key, claimed_n, -1) end
for i = last_event, 10, -1 do
  redis.call('LPUSH', inbox_key, ARGV[i])
end
post_messages(outbox_key, ARGV, last_event + 1, #ARGV)
redis.call('DEL', hist_key, timers_key)
redis.call('ZREM', due_key, instance_id)
drop_claim(leases_key, inst_key, instance_id)
redis.call('HDEL', inst_key, 'output', 'failure', 'rewinding', 'rewound_from')
redis.call('HSET', inst_key, 'execution_id', execution_id, 'start', 'inbox 0', 'updated_ms', now, 'size', size)
if custom_status ~= '' then redis.call('HSET', inst_key, 'custom_status', string.sub(custom_status, 2)) end
if not IDLE[status] then push_work(ready_key, instance_id, now) end  -- suspended meanwhile: on resume
return {CODE.OK}
