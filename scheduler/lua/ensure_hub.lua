-- ensure_hub: create a task hub's metadata once and return what it holds.
--
-- The partition count is fixed when the hub is created; later callers get the
-- stored value whatever they asked for, so every replica agrees on it.
--
-- KEYS[1] meta        hub metadata hash
-- ARGV[1] partitions  partition count to use if the hub is new
-- ARGV[2] schema      schema version to record if the hub is new
-- Returns {partitions, created_ms, is_new (1/0)}
local meta_key = KEYS[1]
local partitions, schema = ARGV[1], ARGV[2]

local existing = redis.call('HMGET', meta_key, 'partitions', 'created_ms')
if existing[1] then
  return {tonumber(existing[1]), tonumber(existing[2]), 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', meta_key, 'partitions', partitions, 'schema', schema, 'created_ms', now)
return {tonumber(partitions), now, 1}
