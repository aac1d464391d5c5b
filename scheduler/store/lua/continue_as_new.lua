-- continue_as_new: end an execution by starting the next one, under the episode's claim.
--
-- Checks the claim token; drops the history, the pending timers and the delivered
-- inbox events of the ending execution; puts the new execution's ExecutionStarted
-- event and the carried-over events at the head of the inbox (events that arrived
-- during the episode follow them); records the new execution id; drops the claim
-- and makes the instance ready, so the new execution starts at once (unless it was
-- suspended meanwhile: then when it is resumed).
--
-- KEYS[1] inst    instance hash
-- KEYS[2] inbox   instance inbox list
-- KEYS[3] hist    instance history list
-- KEYS[4] ready   partition ready zset
-- KEYS[5] leases  partition leases zset
-- KEYS[6] timers  instance pending timers zset
-- KEYS[7] due     partition due zset
-- ARGV[3] instance_id
-- ARGV[4] token          the claim token of the work item
-- ARGV[5] execution_id   the new execution's id
-- ARGV[6] custom_status  "" or "=<custom status>"
-- ARGV[7..] the new ExecutionStarted event, then the carried-over events, serialized
-- Returns {OK}, or {LEASE_LOST} when the token is not the current claim (nothing changed).
local inst_key, inbox_key, hist_key, ready_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local leases_key, timers_key, due_key = KEYS[5], KEYS[6], KEYS[7]
local instance_id, token, execution_id, custom_status = ARGV[3], ARGV[4], ARGV[5], ARGV[6]

local claim = redis.call('HMGET', inst_key, 'lease', 'claimed_n', 'status')
if claim[1] ~= token then return {CODE.LEASE_LOST} end
local claimed_n, status = tonumber(claim[2]), claim[3]
local now = now_ms()

if claimed_n > 0 then redis.call('LTRIM', inbox_key, claimed_n, -1) end
for i = #ARGV, 7, -1 do
  redis.call('LPUSH', inbox_key, ARGV[i])
end
redis.call('DEL', hist_key, timers_key)
redis.call('ZREM', due_key, instance_id)
drop_claim(leases_key, inst_key, instance_id)
redis.call('HDEL', inst_key, 'output', 'failure')
redis.call('HSET', inst_key, 'execution_id', execution_id, 'start', 'inbox 0', 'updated_ms', now)
if custom_status ~= '' then redis.call('HSET', inst_key, 'custom_status', string.sub(custom_status, 2)) end
if not IDLE[status] then push_work(ready_key, instance_id, now) end  -- suspended meanwhile: on resume
return {CODE.OK}
