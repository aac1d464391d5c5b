-- complete_orchestration: apply a worker's episode result, only under its claim.
--
-- The claim's token is accepted also after the claim was handed back (its stream closed,
-- its lease swept) until the next claim takes the instance: then the instance leaves the
-- ready set it went back to, unless something waits for a next episode (see wants_episode).
--
-- Checks, before writing anything, the claim token, the history limit (events), the
-- next work item (bytes of history and inbox) and, when the episode ends the
-- orchestration or sets its custom status, the instance's state (input, output,
-- custom status and failure must fit one reply). Then moves the OrchestratorStarted
-- event handed out and the `claimed_n` delivered inbox events, then the events of the
-- worker's actions, to the history (keeping `start` right); writes the outbox
-- messages; queues the activities (or claims them for the caller's stream) and arms the timers
-- the episode scheduled; drops
-- the claim; applies the custom status and, when the episode ended the orchestration,
-- its final status, output and failure (indexed by completion time). Events that
-- arrived during the episode stay in the inbox and, like a timer that came due during it
-- (see wants_episode), make the instance ready again, unless it was suspended meanwhile
-- (then it stays out of ready and due until it is resumed).
-- An episode of a rewind (see rewind_instance.lua) answered without a rewind ends the rewind.
--
-- KEYS[1] generation     partition generation key
-- KEYS[2] inst           instance hash
-- KEYS[3] inbox          instance inbox list
-- KEYS[4] hist           instance history list
-- KEYS[5] ready          partition ready zset
-- KEYS[6] leases         partition leases zset
-- KEYS[7] stats          partition status counts hash
-- KEYS[8] activities     partition activity queue zset
-- KEYS[9] act_payloads   partition hash: activity item -> serialized ActivityRequest
-- KEYS[10] timers        instance pending timers zset
-- KEYS[11] due           partition due zset
-- KEYS[12] outbox        partition outbox list (messages for other instances, delivered by the relay)
-- KEYS[13] by_completed  partition completion index zset
-- KEYS[14] act_tokens    partition hash: activity item -> claim token
-- KEYS[15] by_status     partition status index zset
-- ARGV[4] instance_id
-- ARGV[5] token          the claim token of the work item
-- ARGV[6] status         final status name, or "" if the orchestration goes on
-- ARGV[7] output         "" or "=<output>" (a leading "=" marks a value, so "" can mean unset)
-- ARGV[8] failure        serialized TaskFailureDetails, or ""
-- ARGV[9] custom_status  "" or "=<custom status>"
-- ARGV[10] n             how many history events follow
-- ARGV[11] m             how many activity (item, request) pairs follow the events
-- ARGV[12] k             how many timer (fire time, event) pairs follow the activities
-- ARGV[13] max_history   history events allowed (0: no limit)
-- ARGV[14] max_bytes     bytes of history and inbox allowed (0: no limit)
-- ARGV[15] max_state     bytes of start event, output, custom status and failure allowed (0: no limit)
-- ARGV[16] claim_lease   0: queue the activities; else claim them for the caller's stream under
--                        leases of this many ms, with the claim tokens that follow them
-- ARGV[17] with_state    "1": when the episode ends the orchestration, return its state too (for the
--                        caller's waiters on it, saving them a read)
-- ARGV[18 .. 17+n]       history events of the worker's actions, serialized
-- then 2m                activity item, serialized ActivityRequest pairs to queue
-- then m (claim_lease>0) the activities' claim tokens, in order
-- then 2k                fire time (ms), serialized TimerFired event pairs of new timers
-- then the rest          outbox messages (protocol.OutboxMessage) for other instances
-- Returns {OK, 1} when events or a timer that came during the episode made the instance ready again, else
-- {OK, 0} (with with_state, when the orchestration ended: {OK, 0, flat field/value list, start event
-- or false}, as get_instance.lua); or, with nothing changed: {LEASE_LOST} when the token is not the instance's claim,
-- {HISTORY_LIMIT, events} or {TOO_LARGE, bytes} (the history or the next work item would pass its
-- limit), {STATE_TOO_LARGE, bytes} (the state would not fit one reply), {HUB_GONE}.
local inst_key, inbox_key, hist_key, ready_key = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local leases_key, stats_key, activities_key, payloads_key = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local timers_key, due_key, outbox_key, completed_key = KEYS[10], KEYS[11], KEYS[12], KEYS[13]
local tokens_key = KEYS[14]
local instance_id, token, status, output = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local failure, custom_status = ARGV[8], ARGV[9]
local n_events, n_activities, n_timers = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local max_history, max_bytes, max_state = tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
local claim_lease, with_state = tonumber(ARGV[16]), ARGV[17] == '1'
local first_event, last_event = 18, 17 + n_events
local first_activity = last_event + 1
local first_token = first_activity + 2 * n_activities
local first_timer = first_token + (claim_lease > 0 and n_activities or 0)
local first_message = first_timer + 2 * n_timers

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
local claim = redis.call('HMGET', inst_key, 'lease', 'claimed_n', 'episode_start', 'start', 'status', 'size',
  'rewinding')
if claim[1] ~= token then return {CODE.LEASE_LOST} end
local claimed_n, episode_start, start, old_status = tonumber(claim[2]), claim[3], claim[4], claim[5]
local rewinding = claim[7]
local offset = redis.call('LLEN', hist_key)
local would_be = offset + 1 + claimed_n + n_events
if max_history > 0 and would_be > max_history then return {CODE.HISTORY_LIMIT, would_be} end
local added = #episode_start + bytes_of(ARGV, first_event, last_event)
local size = tonumber(claim[6] or 0) + added
if max_bytes > 0 and size > max_bytes then return {CODE.TOO_LARGE, size} end
if max_state > 0 and (status ~= '' or custom_status ~= '') then
  local list, index = string.match(start or '', '^(%a+) (%d+)$')
  local state = #(redis.call('LINDEX', list == 'hist' and hist_key or inbox_key, index or 0) or '')
  state = state + math.max(#output - 1, 0) + #failure
  if custom_status ~= '' then
    state = state + #custom_status - 1
  else
    state = state + redis.call('HSTRLEN', inst_key, 'custom_status')
  end
  if state > max_state then return {CODE.STATE_TOO_LARGE, state} end
end
local now = now_ms()
if not redis.call('ZSCORE', leases_key, lease_member(KIND.ORCHESTRATION, instance_id)) then  -- handed back
  redis.call('ZREM', ready_key, instance_id)  -- what waits for a next episode makes it ready again below
end

redis.call('RPUSH', hist_key, episode_start)
if claimed_n > 0 then
  rpush_all(hist_key, redis.call('LRANGE', inbox_key, 0, claimed_n - 1))
  redis.call('LTRIM', inbox_key, claimed_n, -1)
end
rpush_all(hist_key, ARGV, first_event, last_event)
redis.call('HINCRBY', inst_key, 'size', added)
local index = start and tonumber(string.match(start, '^inbox (%d+)$'))
if index then
  local moved = index < claimed_n
  redis.call('HSET', inst_key, 'start', moved and ('hist ' .. (offset + 1 + index)) or ('inbox ' .. (index - claimed_n)))
end

post_messages(outbox_key, ARGV, first_message, #ARGV)
local claim_for = nil
if claim_lease > 0 then
  claim_for = {leases = leases_key, tokens = tokens_key, expiry = now + claim_lease, first = first_token}
end
queue_activities(payloads_key, activities_key, ARGV, first_activity, first_token - 1, now, claim_for)
local suspended = old_status == 'SUSPENDED'  -- meanwhile: resume makes it ready, its claim arms the timers
keep_timers(timers_key, due_key, instance_id, ARGV, first_timer, first_message - 1, not suspended)

drop_claim(leases_key, inst_key, instance_id)
if rewinding then redis.call('HDEL', inst_key, 'rewinding') end  -- answered without a rewind
redis.call('HSET', inst_key, 'updated_ms', now)
if custom_status ~= '' then redis.call('HSET', inst_key, 'custom_status', string.sub(custom_status, 2)) end
if status ~= '' then
  redis.call('HSET', inst_key, 'status', status, 'completed_ms', now)
  if output ~= '' then redis.call('HSET', inst_key, 'output', string.sub(output, 2)) end
  if failure ~= '' then redis.call('HSET', inst_key, 'failure', failure) end
  redis.call('HDEL', inst_key, 'prev_status', 'due_ms')  -- suspended meanwhile: it ended all the same
  count_status(stats_key, KEYS[15], inst_key, instance_id, old_status, status)
  redis.call('ZREM', ready_key, instance_id)
  redis.call('ZREM', due_key, instance_id)
  redis.call('DEL', timers_key)
  redis.call('ZADD', completed_key, now, instance_id)
  wake(WAKE.STATUS, instance_id)
  if with_state then
    local state = instance_state(inst_key, inbox_key, hist_key)
    return {CODE.OK, 0, state[2], state[3]}
  end
elseif not suspended and wants_episode(inst_key, inbox_key, timers_key, now) then
  push_work(ready_key, instance_id, now)
  return {CODE.OK, 1}
end
return {CODE.OK, 0}
