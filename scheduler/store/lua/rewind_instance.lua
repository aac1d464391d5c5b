-- rewind_instance: RewindInstance's one atomic write (also the rewind of a failed
-- sub-orchestration that its rewound parent asks for through the outbox).
--
-- Only a FAILED instance is rewound. It becomes RUNNING again: stats moved, out of the
-- completion index, its completion time, output, failure and overflow mark cleared, the
-- status change published. Events left in its inbox when it failed join its history, so
-- that the worker's rewrite of the history sees them (a failure among them is retried
-- too); the ExecutionRewound event is then its only pending event, and `rewinding` makes
-- the claim hand out that event alone (see claim_orchestration.lua). The instance is made
-- ready. `rewinds` counts its rewinds (it names the messages that tell a parent how the
-- instance ended, so a second end after a rewind is not taken for the first).
-- With a message id, the rewind is done once: the instance remembers the id (see remember).
--
-- KEYS[1] generation    partition generation key
-- KEYS[2] inst          instance hash
-- KEYS[3] inbox         instance inbox list
-- KEYS[4] hist          instance history list
-- KEYS[5] ready         partition ready zset
-- KEYS[6] stats         partition status counts hash
-- KEYS[7] by_completed  partition completion index zset
-- KEYS[8] seen          instance zset of the message ids it took
-- KEYS[9] by_status     partition status index zset
-- ARGV[4] instance_id
-- ARGV[5] event       serialized ExecutionRewound HistoryEvent
-- ARGV[6] message_id  the outbox message asking for it, or "" (a client's call)
-- ARGV[7] max_bytes   bytes of history and inbox allowed (0: no limit)
-- Returns {OK, status before}; or, with nothing changed: {NOT_FOUND}, {WRONG_STATUS, status} (not
-- FAILED), {DONE_BEFORE} (this message was applied before), {TOO_LARGE, bytes}, {HUB_GONE}.
local inst_key, inbox_key, hist_key, ready_key = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local stats_key, completed_key, seen_key = KEYS[6], KEYS[7], KEYS[8]
local instance_id, event, message_id, max_bytes = ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
if message_id ~= '' and seen_before(seen_key, message_id) then return {CODE.DONE_BEFORE} end
local h = redis.call('HMGET', inst_key, 'status', 'size')
local status = h[1]
if not status then return {CODE.NOT_FOUND} end
if status ~= 'FAILED' then return {CODE.WRONG_STATUS, status} end
local size = tonumber(h[2] or 0) + #event
if max_bytes > 0 and size > max_bytes then return {CODE.TOO_LARGE, size} end
local now = now_ms()

inbox_to_history(inst_key, inbox_key, hist_key)
redis.call('RPUSH', inbox_key, event)
if message_id ~= '' then remember(seen_key, message_id, now) end
redis.call('HDEL', inst_key, 'completed_ms', 'output', 'failure', 'overflow')
redis.call('HSET', inst_key, 'status', 'RUNNING', 'rewinding', '1', 'size', size, 'updated_ms', now)
redis.call('HINCRBY', inst_key, 'rewinds', 1)
redis.call('ZREM', completed_key, instance_id)
count_status(stats_key, KEYS[9], inst_key, instance_id, status, 'RUNNING')
push_work(ready_key, instance_id, now)
wake(WAKE.STATUS, instance_id)
return {CODE.OK, status}
