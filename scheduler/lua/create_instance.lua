-- create_instance: StartInstance's one atomic write.
--
-- Writes the instance hash (status PENDING), its first event into the inbox, its
-- creation index and stats, and makes it ready now or puts it on the due set at
-- its scheduled start. An existing instance is replaced only when its status is
-- one of the replaceable ones; otherwise nothing is written. With `same_is_done`,
-- an existing instance of the same execution id is this creation, done before
-- (an outbox message delivered again): it is left alone, whatever its status.
--
-- KEYS[1] inst        instance hash
-- KEYS[2] inbox       instance inbox list
-- KEYS[3] hist        instance history list
-- KEYS[4] due         partition due zset
-- KEYS[5] ready       partition ready zset
-- KEYS[6] by_created  partition creation index zset
-- KEYS[7] stats       partition status counts hash
-- KEYS[8] timers      instance pending timers zset (dropped with a replaced instance)
-- KEYS[9] delivered   instance set of delivered message ids (dropped with a replaced instance)
-- ARGV[1] instance_id
-- ARGV[2] due_ms       scheduled start in epoch ms rounded up, or "" to start now
-- ARGV[3] start_event  serialized ExecutionStarted HistoryEvent
-- ARGV[4] replaceable  space-separated status names that may be replaced
-- ARGV[5] channel      pub/sub channel for wake-ups ("due" for an earlier due entry, "work" when
--                      the ready set stops being empty)
-- ARGV[6] hub          task hub name (for the wake-up message)
-- ARGV[7] same_is_done "1" or "0", see above; ARGV[8] execution_id  the new execution's id
-- ARGV[9..] field, value pairs of the instance hash (the input and tags travel in the start event)
-- Returns {0, created_ms} on success, {1, existing_status} if the id is taken, {3, existing_status}
-- if this creation was done before.
local inst_key, inbox_key, hist_key = KEYS[1], KEYS[2], KEYS[3]
local due_key, ready_key, created_key, stats_key = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local instance_id = ARGV[1]
local due_ms = tonumber(ARGV[2])
local start_event = ARGV[3]
local replaceable = ' ' .. ARGV[4] .. ' '
local channel, hub = ARGV[5], ARGV[6]
local same_is_done, execution_id = ARGV[7] == '1', ARGV[8]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local old_status = redis.call('HGET', inst_key, 'status')
if old_status then
  if same_is_done and redis.call('HGET', inst_key, 'execution_id') == execution_id then
    return {3, old_status}
  end
  if not string.find(replaceable, ' ' .. old_status .. ' ', 1, true) then
    return {1, old_status}
  end
  redis.call('DEL', inst_key, inbox_key, hist_key, KEYS[8], KEYS[9])
  redis.call('ZREM', due_key, instance_id)
  redis.call('ZREM', ready_key, instance_id)
  redis.call('HINCRBY', stats_key, old_status, -1)
end

redis.call('HSET', inst_key, 'status', 'PENDING', 'created_ms', now, 'updated_ms', now,
  'start', 'inbox 0', unpack(ARGV, 9))
redis.call('RPUSH', inbox_key, start_event)
redis.call('ZADD', created_key, now, instance_id)
redis.call('HINCRBY', stats_key, 'PENDING', 1)

if due_ms and due_ms > now then
  local head = redis.call('ZRANGE', due_key, 0, 0, 'WITHSCORES')
  redis.call('ZADD', due_key, due_ms, instance_id)
  if not head[2] or due_ms < tonumber(head[2]) then
    redis.call('PUBLISH', channel, hub .. ' due ' .. due_ms .. ' ' .. due_key)
  end
else
  if redis.call('ZCARD', ready_key) == 0 then
    redis.call('PUBLISH', channel, hub .. ' work ' .. ready_key)  -- idle work streams wake up
  end
  redis.call('ZADD', ready_key, 'NX', now, instance_id)
end
return {0, now}
