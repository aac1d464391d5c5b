-- continue_as_new: end an execution by starting the next one, under the episode's claim.
--
-- Checks the claim token; drops the history, the pending timers and the delivered
-- inbox events of the ending execution; puts the new execution's ExecutionStarted
-- event and the carried-over events at the head of the inbox (events that arrived
-- during the episode follow them); records the new execution id; drops the lease
-- and makes the instance ready, so the new execution starts at once.
--
-- KEYS[1] inst    instance hash
-- KEYS[2] inbox   instance inbox list
-- KEYS[3] hist    instance history list
-- KEYS[4] ready   partition ready zset
-- KEYS[5] leases  partition leases zset
-- KEYS[6] timers  instance pending timers zset
-- KEYS[7] due     partition due zset
-- ARGV[1] instance_id
-- ARGV[2] token          the claim token of the work item
-- ARGV[3] execution_id   the new execution's id
-- ARGV[4] custom_status  "" or "=<custom status>"
-- ARGV[5..] the new ExecutionStarted event, then the carried-over events, serialized
-- Returns {0} when applied, {1} when the token is not the current claim (nothing changed).
local inst_key, inbox_key, hist_key, ready_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local leases_key, timers_key, due_key = KEYS[5], KEYS[6], KEYS[7]
local instance_id, token, execution_id, custom_status = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local claim = redis.call('HMGET', inst_key, 'lease', 'claimed_n')
if claim[1] ~= token then return {1} end
local claimed_n = tonumber(claim[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if claimed_n > 0 then redis.call('LTRIM', inbox_key, claimed_n, -1) end
for i = #ARGV, 5, -1 do
  redis.call('LPUSH', inbox_key, ARGV[i])
end
redis.call('DEL', hist_key, timers_key)
redis.call('ZREM', due_key, instance_id)
redis.call('ZREM', leases_key, 'o|' .. instance_id)
redis.call('HDEL', inst_key, 'lease', 'claimed_n', 'episode_start', 'output', 'failure')
redis.call('HSET', inst_key, 'execution_id', execution_id, 'start', 'inbox 0', 'updated_ms', now)
if custom_status ~= '' then redis.call('HSET', inst_key, 'custom_status', string.sub(custom_status, 2)) end
redis.call('ZADD', ready_key, 'NX', now, instance_id)
return {0}
