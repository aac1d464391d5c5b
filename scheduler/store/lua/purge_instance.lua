-- purge_instance: delete one terminal instance and every trace of it in its partition.
--
-- Only an instance in a terminal status (COMPLETED, FAILED, TERMINATED) is purged;
-- any other instance is left exactly as it is. The status is read here, in the
-- same atomic step that deletes, so a purge never races a status change. With
-- `ended_before` (retention), the instance goes only if it ended before that time,
-- checked here too: one restarted or rewound and ended again since the caller's read
-- of the completion index is left alone.
--
-- KEYS[1] generation    partition generation key
-- KEYS[2] inst          instance hash
-- KEYS[3] inbox         instance inbox list
-- KEYS[4] hist          instance history list
-- KEYS[5] by_created    partition creation index zset
-- KEYS[6] due           partition due zset
-- KEYS[7] ready         partition ready zset
-- KEYS[8] stats         partition status counts hash
-- KEYS[9] timers        instance pending timers zset
-- KEYS[10] seen         instance zset of the message ids it took
-- KEYS[11] by_completed partition completion index zset
-- KEYS[12] by_status    partition status index zset
-- ARGV[4] instance_id
-- ARGV[5] ended_before  epoch ms, or "" for any terminal instance
-- Returns {OK, status} when purged, {WRONG_STATUS, status} when not terminal, {NOT_READY} when it ended
-- at or after `ended_before`, {NOT_FOUND} or {HUB_GONE}.
local inst_key, inbox_key, hist_key, created_key = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local due_key, ready_key, stats_key = KEYS[6], KEYS[7], KEYS[8]
local timers_key, seen_key, completed_key = KEYS[9], KEYS[10], KEYS[11]
local instance_id, ended_before = ARGV[4], tonumber(ARGV[5])

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
local h = redis.call('HMGET', inst_key, 'status', 'completed_ms')
local status = h[1]
if not status then return {CODE.NOT_FOUND} end
if not TERMINAL[status] then return {CODE.WRONG_STATUS, status} end
if ended_before and not (tonumber(h[2] or '') and tonumber(h[2]) < ended_before) then return {CODE.NOT_READY} end
index_instance(KEYS[12], inst_key, instance_id, status, false)
redis.call('DEL', inst_key, inbox_key, hist_key, timers_key, seen_key)
redis.call('ZREM', created_key, instance_id)
redis.call('ZREM', completed_key, instance_id)
redis.call('ZREM', due_key, instance_id)
redis.call('ZREM', ready_key, instance_id)
redis.call('HINCRBY', stats_key, status, -1)
return {CODE.OK, status}
