-- register_hub: admit a task hub to the hub registry, within the bound on task hubs.
--
-- The registry is the set every replica reads to find the hubs it serves; a hub is added to
-- it before its metadata is created (ensure_hub.lua), so this check-and-add is the one place
-- that bounds the number of hubs, atomically across replicas. A hub already registered
-- (it exists, or is being deleted) is admitted again without counting twice.
--
-- KEYS[1] hubs      the hub registry (set of hub names)
-- ARGV[2] (the hub) is the name to admit.
-- ARGV[4] max_hubs  the most hubs the registry may hold
-- Returns {OK, 1 if it was added now else 0}, or {TOO_MANY_HUBS, max_hubs} (nothing written).
local hubs_key = KEYS[1]
local max_hubs = tonumber(ARGV[4])

if redis.call('SISMEMBER', hubs_key, HUB) == 1 then return {CODE.OK, 0} end
if redis.call('SCARD', hubs_key) >= max_hubs then return {CODE.TOO_MANY_HUBS, max_hubs} end
redis.call('SADD', hubs_key, HUB)
return {CODE.OK, 1}
