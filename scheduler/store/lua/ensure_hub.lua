-- ensure_hub: create a task hub's metadata once and return what it holds.
--
-- The partition count is fixed when the hub is created; later callers get the
-- stored value whatever they asked for, so every replica agrees on it.
--
-- KEYS[1] meta        hub metadata hash
-- ARGV[3] partitions  partition count to use if the hub is new
-- ARGV[4] schema      schema version to record if the hub is new
-- Returns {OK, partitions, created_ms, is_new (1/0)}.
local meta_key = KEYS[1]
local partitions, schema = ARGV[3], ARGV[4]

local existing = redis.call('HMGET', meta_key, 'partitions', 'created_ms')
if existing[1] then
  return {CODE.OK, tonumber(existing[1]), tonumber(existing[2]), 0}
end
local now = now_ms()
redis.call('HSET', meta_key, 'partitions', partitions, 'schema', schema, 'created_ms', now)
return {CODE.OK, tonumber(partitions), now, 1}
