-- promote_due: move due entries whose time has come to the ready set.
--
-- Bounded: moves at most `limit` entries per call; the caller calls again at
-- once when the batch was full, otherwise sleeps until the returned next due
-- time. An entry is removed from the due set in the same step it is made ready,
-- so concurrent promoters on many replicas promote each entry exactly once.
-- Time is Redis server time: an entry due at ms D moves only once now >= D.
--
-- KEYS[1] due    partition due zset (score = due epoch ms)
-- KEYS[2] ready  partition ready zset (score = ready since, ms)
-- ARGV[1] limit    most entries to move
-- ARGV[2] channel  pub/sub channel: "<hub> work <ready key>" when the ready set stops being empty
-- ARGV[3] hub      task hub name
-- Returns {now_ms, next_due_ms or -1, due_ms of each promoted entry...}
local due_key, ready_key = KEYS[1], KEYS[2]
local limit, channel, hub = tonumber(ARGV[1]), ARGV[2], ARGV[3]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local entries = redis.call('ZRANGEBYSCORE', due_key, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
local result = {now, -1}
if #entries > 0 then
  local members, pairs_ = {}, {}
  for i = 1, #entries, 2 do
    members[#members + 1] = entries[i]
    pairs_[#pairs_ + 1] = entries[i + 1]
    pairs_[#pairs_ + 1] = entries[i]
    result[#result + 1] = entries[i + 1]
  end
  if redis.call('ZCARD', ready_key) == 0 then
    redis.call('PUBLISH', channel, hub .. ' work ' .. ready_key)  -- idle work streams wake up
  end
  redis.call('ZREM', due_key, unpack(members))
  redis.call('ZADD', ready_key, 'NX', unpack(pairs_))
end

local head = redis.call('ZRANGE', due_key, 0, 0, 'WITHSCORES')
if head[2] then
  result[2] = head[2]
end
return result
