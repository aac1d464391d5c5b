-- promote_due: move due entries whose time has come to the ready queues.
--
-- Bounded: moves at most `limit` entries per call; the caller calls again at
-- once when the batch was full, otherwise sleeps until the returned next due
-- time. An entry is removed from the due set in the same step it is made ready,
-- so concurrent promoters on many replicas promote each entry exactly once.
-- Time is Redis server time: an entry due at ms D moves only once now >= D.
-- Entity ids (they start with "@", which orchestration ids may not) go to the
-- entity queue: a delayed signal's time has come. Work streams are woken by the
-- rule every script that queues work follows (wake_streams).
--
-- KEYS[1] generation  partition generation key
-- KEYS[2] due         partition due zset (score = due epoch ms)
-- KEYS[3] ready       partition ready zset (score = ready since, ms)
-- KEYS[4] entities    partition queue of entities to dispatch (score = ready since, ms)
-- ARGV[4] limit       most entries to move
-- ARGV[5] members     '1': name each promoted entry too (for tracing), '0' or absent: only its due time
-- Returns {OK, now_ms, next_due_ms or -1, due_ms of each promoted entry...} (with members: due_ms, member
-- of each), or {HUB_GONE}.
local due_key, ready_key, entities_key = KEYS[2], KEYS[3], KEYS[4]
local limit, with_members = tonumber(ARGV[4]), ARGV[5] == '1'

if not hub_is_current(KEYS[1]) then return {CODE.HUB_GONE} end
local now = now_ms()
local entries = redis.call('ZRANGEBYSCORE', due_key, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
local result = {CODE.OK, now, -1}
if #entries > 0 then
  local members, scored = {}, {[ready_key] = {}, [entities_key] = {}}  -- ready since its due time
  for i = 1, #entries, 2 do
    local queue = string.sub(entries[i], 1, 1) == '@' and entities_key or ready_key
    members[#members + 1] = entries[i]
    scored[queue][#scored[queue] + 1] = entries[i + 1]
    scored[queue][#scored[queue] + 1] = entries[i]
    result[#result + 1] = entries[i + 1]
    if with_members then result[#result + 1] = entries[i] end
  end
  in_chunks(members, function(...) redis.call('ZREM', due_key, ...) end)
  for _, queue in ipairs({ready_key, entities_key}) do
    if #scored[queue] > 0 then
      wake_streams(queue, now)
      in_chunks(scored[queue], function(...) redis.call('ZADD', queue, 'NX', ...) end)
    end
  end
end

local head = redis.call('ZRANGE', due_key, 0, 0, 'WITHSCORES')
if head[2] then result[3] = head[2] end
return result
