-- ensure_hub: create a task hub's metadata once and return what it holds.
--
-- The partition count and the generation are fixed when the hub is created; later
-- callers get the stored values whatever they asked for, so every replica agrees on
-- them. A hub being deleted (`deleting` set, see delete_task_hub in store.py) cannot be
-- used or created again until its deletion has finished.
--
-- KEYS[1] meta        hub metadata hash
-- ARGV[4] partitions  partition count to use if the hub is new
-- ARGV[5] schema      schema version to record if the hub is new
-- ARGV[3] (the generation) is the one to give the hub if it is new: a fresh number of the
-- hub generation counter, larger than any generation the hub had before.
-- Returns {OK, partitions, created_ms, generation, is_new (1/0), schema}, or {HUB_DELETING, deleting since ms}.
local meta_key = KEYS[1]
local partitions, schema = ARGV[4], ARGV[5]

local existing = redis.call('HMGET', meta_key, 'partitions', 'created_ms', 'generation', 'deleting_ms', 'schema')
if existing[4] then return {CODE.HUB_DELETING, tonumber(existing[4])} end
if existing[1] then
  return {CODE.OK, tonumber(existing[1]), tonumber(existing[2]), tonumber(existing[3]), 0, tonumber(existing[5] or 1)}
end
local now = now_ms()
redis.call('HSET', meta_key, 'partitions', partitions, 'schema', schema, 'created_ms', now,
  'generation', GENERATION)
return {CODE.OK, tonumber(partitions), now, GENERATION, 1, tonumber(schema)}
