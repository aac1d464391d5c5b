-- resume_instance: ResumeInstance's one atomic write.
--
-- A SUSPENDED instance gets back its previous status and an ExecutionResumed
-- event in its inbox. It returns to the due set at its remembered due time if that
-- is still ahead (publishing the due wake-up when it becomes the partition's head,
-- as create_instance does); otherwise, and always when it had been RUNNING, it is
-- made ready. Like the SDK's reference backend, resuming an instance that is not
-- suspended is accepted; there is nothing to resume, so nothing is written.
--
-- KEYS[1] inst   instance hash
-- KEYS[2] inbox  instance inbox list
-- KEYS[3] due    partition due zset
-- KEYS[4] ready  partition ready zset
-- KEYS[5] stats  partition status counts hash
-- ARGV[1] instance_id
-- ARGV[2] event    serialized ExecutionResumed HistoryEvent
-- ARGV[3] channel  pub/sub channel for wake-ups
-- ARGV[4] hub      task hub name (for the wake-up message)
-- Returns {0, status before}, or {2} if there is no such instance.
local inst_key, inbox_key, due_key, ready_key, stats_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local instance_id, event, channel, hub = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local h = redis.call('HMGET', inst_key, 'status', 'prev_status', 'due_ms')
local status, prev, due_ms = h[1], h[2] or 'PENDING', tonumber(h[3])
if not status then
  return {2}
end
if status ~= 'SUSPENDED' then
  return {0, status}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

redis.call('RPUSH', inbox_key, event)
redis.call('HSET', inst_key, 'status', prev, 'updated_ms', now)
redis.call('HDEL', inst_key, 'prev_status', 'due_ms')
redis.call('HINCRBY', stats_key, 'SUSPENDED', -1)
redis.call('HINCRBY', stats_key, prev, 1)

if due_ms and due_ms > now then
  local head = redis.call('ZRANGE', due_key, 0, 0, 'WITHSCORES')
  redis.call('ZADD', due_key, due_ms, instance_id)
  if not head[2] or due_ms < tonumber(head[2]) then
    redis.call('PUBLISH', channel, hub .. ' due ' .. due_ms .. ' ' .. due_key)
  end
end
if not (due_ms and due_ms > now) or prev == 'RUNNING' then
  if redis.call('ZCARD', ready_key) == 0 then redis.call('PUBLISH', channel, hub .. ' work ' .. ready_key) end
  redis.call('ZADD', ready_key, 'NX', now, instance_id)
end
redis.call('PUBLISH', channel, hub .. ' status ' .. instance_id)
return {0, status}
