-- purge_instance: delete one terminal instance and every trace of it in its partition.
--
-- Only an instance in a terminal status (COMPLETED, FAILED, TERMINATED) is purged;
-- any other instance is left exactly as it is. The status is read here, in the
-- same atomic step that deletes, so a purge never races a status change.
--
-- KEYS[1] inst        instance hash
-- KEYS[2] inbox       instance inbox list
-- KEYS[3] hist        instance history list
-- KEYS[4] by_created  partition creation index zset
-- KEYS[5] due         partition due zset
-- KEYS[6] ready       partition ready zset
-- KEYS[7] stats       partition status counts hash
-- KEYS[8] timers      instance pending timers zset
-- KEYS[9] delivered   instance set of delivered message ids
-- ARGV[3] instance_id
-- Returns {OK, status} when purged, {WRONG_STATUS, status} when not terminal, {NOT_FOUND}.
local inst_key, inbox_key, hist_key = KEYS[1], KEYS[2], KEYS[3]
local created_key, due_key, ready_key, stats_key = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local timers_key, delivered_key = KEYS[8], KEYS[9]
local instance_id = ARGV[3]

local status = redis.call('HGET', inst_key, 'status')
if not status then return {CODE.NOT_FOUND} end
if not TERMINAL[status] then return {CODE.WRONG_STATUS, status} end
redis.call('DEL', inst_key, inbox_key, hist_key, timers_key, delivered_key)
redis.call('ZREM', created_key, instance_id)
redis.call('ZREM', due_key, instance_id)
redis.call('ZREM', ready_key, instance_id)
redis.call('HINCRBY', stats_key, status, -1)
return {CODE.OK, status}
