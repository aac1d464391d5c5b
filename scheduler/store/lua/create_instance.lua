-- create_instance: StartInstance's one atomic write.
--
-- Writes the instance hash (status PENDING), its first event into the inbox, its
-- status index member(s) (and, in a hub of schema 1, its by-created entry) and
-- stats, and makes it ready now or puts it on the due set at its scheduled start.
-- An existing instance is replaced only when its status is one of the replaceable
-- ones; otherwise nothing is written. With `same_is_done`,
-- an existing instance of the same execution id is this creation, done before
-- (an outbox message delivered again): it is left alone, whatever its status. With a
-- `claim_token`, an instance made ready now is claimed in the same step for the caller's work
-- stream, as claim_orchestration.lua claims it.
--
-- KEYS[1] generation    partition generation key
-- KEYS[2] inst          instance hash
-- KEYS[3] inbox         instance inbox list
-- KEYS[4] hist          instance history list
-- KEYS[5] due           partition due zset
-- KEYS[6] ready         partition ready zset
-- KEYS[7] by_created    partition creation index zset (written only with `by_created`)
-- KEYS[8] stats         partition status counts hash
-- KEYS[9] timers        instance pending timers zset (dropped with a replaced instance)
-- KEYS[10] seen         instance zset of the message ids it took (dropped with a replaced instance)
-- KEYS[11] by_completed partition completion index zset
-- KEYS[12] leases       partition leases zset
-- KEYS[13] by_status    partition status index zset
-- ARGV[4] instance_id
-- ARGV[5] due_ms        scheduled start in epoch ms rounded up, or "" to start now
-- ARGV[6] start_event   serialized ExecutionStarted HistoryEvent
-- ARGV[7] replaceable   space-separated status names that may be replaced
-- ARGV[8] same_is_done  "1" or "0", see above
-- ARGV[9] execution_id  the new execution's id
-- ARGV[10] claim_token  "" (no claim), or the token to claim the instance under if it is ready now
-- ARGV[11] lease_ms     the claim's lease
-- ARGV[12] episode_start the claim's serialized OrchestratorStarted HistoryEvent
-- ARGV[13] by_created   "1": add the instance to KEYS[7] (a hub of schema 1), "0": not
-- ARGV[14] index_all    "1": also index the instance under "*" (a hub of schema 1 or 2), "0": not
-- ARGV[15..] field, value pairs of the instance hash (the input and tags travel in the start event)
-- Returns {OK, created_ms} or, when claimed, {OK, created_ms, lease expiry, flat hash, history, new
-- events}; {EXISTS, status} if the id is taken, {DONE_BEFORE, status} if this creation was done
-- before, {HUB_GONE} if the caller's task hub was deleted.
local inst_key, inbox_key, hist_key, due_key = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ready_key, created_key, stats_key = KEYS[6], KEYS[7], KEYS[8]
local timers_key, seen_key, completed_key = KEYS[9], KEYS[10], KEYS[11]
local index_key = KEYS[13]
local instance_id, due_ms, start_event = ARGV[4], tonumber(ARGV[5]), ARGV[6]
local replaceable = ' ' .. ARGV[7] .. ' '
local same_is_done, execution_id = ARGV[8] == '1', ARGV[9]
local by_created, index_all = ARGV[13] == '1', ARGV[14] == '1'

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
local now = now_ms()
local old_status = redis.call('HGET', inst_key, 'status')
if old_status then
  if same_is_done and redis.call('HGET', inst_key, 'execution_id') == execution_id then
    return {CODE.DONE_BEFORE, old_status}
  end
  if not string.find(replaceable, ' ' .. old_status .. ' ', 1, true) then
    return {CODE.EXISTS, old_status}
  end
  index_instance(index_key, inst_key, instance_id, old_status, false)
  redis.call('DEL', inst_key, inbox_key, hist_key, timers_key, seen_key)
  redis.call('ZREM', due_key, instance_id)
  redis.call('ZREM', ready_key, instance_id)
  redis.call('ZREM', completed_key, instance_id)
  redis.call('HINCRBY', stats_key, old_status, -1)
end

-- No `updated_ms` until the first change (it is `created_ms` until then: a field fewer per pending instance).
redis.call('HSET', inst_key, 'status', 'PENDING', 'created_ms', now,
  'start', 'inbox 0', 'size', #start_event, unpack(ARGV, 15))
redis.call('RPUSH', inbox_key, start_event)
if by_created then redis.call('ZADD', created_key, now, instance_id) end
redis.call('HINCRBY', stats_key, 'PENDING', 1)
index_instance(index_key, inst_key, instance_id, 'PENDING', true, index_all)
if due_ms and due_ms > now then
  add_due(due_key, instance_id, due_ms, false)
  return {CODE.OK, now}
end
local claiming = ARGV[10] ~= ''
push_work(ready_key, instance_id, now, claiming)
if claiming then
  local claim = claim_instance({ready = ready_key, leases = KEYS[12], inst = inst_key, inbox = inbox_key,
    hist = hist_key, stats = stats_key, by_status = index_key, timers = timers_key, due = due_key}, instance_id, ARGV[10],
    tonumber(ARGV[11]), ARGV[12])
  if claim[1] == CODE.OK then return {CODE.OK, now, unpack(claim, 2)} end
end
return {CODE.OK, now}
