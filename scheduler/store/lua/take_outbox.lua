-- take_outbox: take a partition's outbox for one relay, and read its oldest messages.
--
-- One relay at a time drains a partition's outbox: the relay that holds the partition's
-- relay key (its owner name, expiring after `ttl_ms`) reads and delivers; another relay
-- finds it held and leaves the partition alone (the holder reads the outbox again when it
-- lets go: see release_outbox.lua). Taking it again while holding it renews it. Deliveries
-- are idempotent, so a holder that outlives its key (a slow batch) costs only duplicate work.
--
-- KEYS[1] relay    partition relay key (string: owner, expires)
-- KEYS[2] outbox   partition outbox list
-- ARGV[4] owner    the relay's name (unique per replica and hub)
-- ARGV[5] ttl_ms   how long the hold lasts unless renewed
-- ARGV[6] limit    most messages to read
-- Returns {OK, message...} (the oldest messages, left in the outbox), or {LEASED} when another
-- relay holds the partition.
local relay_key, outbox_key = KEYS[1], KEYS[2]
local owner, ttl_ms, limit = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])

local holder = redis.call('GET', relay_key)
if holder and holder ~= owner then return {CODE.LEASED} end
local messages = redis.call('LRANGE', outbox_key, 0, limit - 1)
if #messages == 0 then
  if holder then redis.call('DEL', relay_key) end
  return {CODE.OK}
end
redis.call('SET', relay_key, owner, 'PX', ttl_ms)
local result = {CODE.OK}
for _, message in ipairs(messages) do result[#result + 1] = message end
return result
