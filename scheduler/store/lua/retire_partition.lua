-- retire_partition: seal one partition of a task hub being deleted (a step of delete_task_hub).
--
-- Sets the partition's generation to the deletion's tombstone generation, so that from
-- now on every write of an earlier generation of the hub to this partition is refused
-- (hub_is_current): what the deletion removes afterwards cannot come back. The tombstone
-- expires after `ttl_ms` (writers that knew the hub have long noticed by then). A
-- partition already sealed with a newer generation is left alone.
--
-- KEYS[1] generation  the partition's generation key
-- ARGV[3] (the generation) is the tombstone generation.
-- ARGV[4] ttl_ms      how long the tombstone is kept
-- Returns {OK}.
local generation_key, ttl_ms = KEYS[1], tonumber(ARGV[4])

if tonumber(redis.call('GET', generation_key) or 0) < GENERATION then
  redis.call('SET', generation_key, GENERATION, 'PX', ttl_ms)
end
return {CODE.OK}
