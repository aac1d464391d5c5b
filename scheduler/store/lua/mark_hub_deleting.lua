-- mark_hub_deleting: the first step of deleting a task hub (see delete_task_hub in store.py).
--
-- Marks the hub as being deleted (it cannot be used or created again until the deletion
-- has finished and removed the metadata) and returns what the deletion needs. Marking a
-- hub already being deleted keeps its first tombstone generation, so a deletion that a
-- replica left unfinished is resumed with the same one.
--
-- KEYS[1] meta  hub metadata hash
-- ARGV[3] (the generation) is the tombstone generation to record: a fresh number of the hub
-- generation counter, larger than every generation the hub had.
-- Returns {OK, partitions, tombstone generation}, or {NOT_FOUND} if there is no such hub.
local meta_key = KEYS[1]

local meta = redis.call('HMGET', meta_key, 'partitions', 'deleting')
if not meta[1] then return {CODE.NOT_FOUND} end
if meta[2] then return {CODE.OK, tonumber(meta[1]), tonumber(meta[2])} end
redis.call('HSET', meta_key, 'deleting', GENERATION, 'deleting_ms', now_ms())
return {CODE.OK, tonumber(meta[1]), GENERATION}
