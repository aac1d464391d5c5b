-- complete_activity: deliver an activity's result to its orchestration, once.
--
-- Applied only while `token` is the item's claim: also after the claim was handed back
-- (its stream closed, its lease swept) until the next claim takes the item, which then
-- leaves the activity queue again. The item's payload, token and lease go in the same
-- step, so a duplicate completion, or one after another claim took the item, changes nothing. The result event reaches the instance's inbox only if the instance is
-- still in the execution that scheduled it and has not ended; a running instance
-- is made ready (a suspended one keeps the event until it is resumed). A result that
-- the next work item has no room for is not appended: the instance is marked to fail
-- (`overflow`, applied at its next dispatch), so it never waits for a lost result.
-- With a `claim_token`, an instance the result made ready (or that was ready) is claimed in the
-- same step for the caller's work stream, as claim_orchestration.lua claims it.
--
-- KEYS[1] generation    partition generation key
-- KEYS[2] act_tokens    partition hash: item -> claim token
-- KEYS[3] act_payloads  partition hash: item -> serialized ActivityRequest
-- KEYS[4] leases        partition leases zset
-- KEYS[5] inst          instance hash
-- KEYS[6] inbox         instance inbox list
-- KEYS[7] ready         partition ready zset
-- KEYS[8] hist          instance history list
-- KEYS[9] stats         partition status counts hash
-- KEYS[10] timers       instance pending timers zset
-- KEYS[11] due          partition due zset
-- KEYS[12] activities   partition activity queue zset
-- KEYS[13] by_status    partition status index zset
-- ARGV[4] item
-- ARGV[5] token
-- ARGV[6] instance_id
-- ARGV[7] execution_id  the execution that scheduled the activity
-- ARGV[8] event         serialized TaskCompleted or TaskFailed HistoryEvent
-- ARGV[9] max_bytes     bytes of history and inbox allowed
-- ARGV[10] overflow     the failure ("<error type>\n<message>") if the result has no room
-- ARGV[11] claim_token  "" (no claim), or the token to claim the instance under
-- ARGV[12] lease_ms     the claim's lease
-- ARGV[13] episode_start the claim's serialized OrchestratorStarted HistoryEvent
-- Returns {OK, lease expiry, flat hash, history, new events} when applied and claimed; {OK} when
-- applied (or dropped: another execution, an ended instance) and not claimed; {TOO_LARGE} when
-- the instance was marked to fail, {LEASE_LOST} when the token is not the item's claim, {HUB_GONE}.
local tokens_key, payloads_key, leases_key = KEYS[2], KEYS[3], KEYS[4]
local inst_key, inbox_key, ready_key = KEYS[5], KEYS[6], KEYS[7]
local item, token, instance_id, execution_id, event = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local max_bytes, overflow = tonumber(ARGV[9]), ARGV[10]

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
if redis.call('HGET', tokens_key, item) ~= token then return {CODE.LEASE_LOST} end
local inst = redis.call('HMGET', inst_key, 'status', 'execution_id', 'size')
local status = inst[1]
local now = now_ms()
redis.call('HDEL', tokens_key, item)
redis.call('HDEL', payloads_key, item)
redis.call('ZREM', leases_key, lease_member(KIND.ACTIVITY, item))
redis.call('ZREM', KEYS[12], item)  -- queued again if it was handed back

if not status or inst[2] ~= execution_id or TERMINAL[status] then return {CODE.OK} end
if tonumber(inst[3] or 0) + #event > max_bytes then
  redis.call('HSETNX', inst_key, 'overflow', overflow)
  if status == 'RUNNING' then push_work(ready_key, instance_id, now) end
  return {CODE.TOO_LARGE}
end
local claiming = ARGV[11] ~= ''
deliver(inst_key, inbox_key, ready_key, instance_id, status, event, now, claiming)
if claiming then
  local claim = claim_instance({ready = ready_key, leases = leases_key, inst = inst_key, inbox = inbox_key,
    hist = KEYS[8], stats = KEYS[9], by_status = KEYS[13], timers = KEYS[10], due = KEYS[11]}, instance_id, ARGV[11],
    tonumber(ARGV[12]), ARGV[13])
  if claim[1] == CODE.OK then return claim end
end
return {CODE.OK}
