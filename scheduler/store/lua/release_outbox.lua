-- release_outbox: a relay lets go of a partition's outbox (see take_outbox.lua).
--
-- Returns how many messages wait in the outbox, so that the relay reads again at once when
-- messages came while it held the partition: a relay that found it held then left it alone,
-- trusting the holder to read them.
--
-- KEYS[1] relay    partition relay key
-- KEYS[2] outbox   partition outbox list
-- ARGV[4] owner    the relay's name
-- Returns {OK, messages waiting}.
local relay_key, outbox_key = KEYS[1], KEYS[2]
local owner = ARGV[4]

if redis.call('GET', relay_key) == owner then redis.call('DEL', relay_key) end
return {CODE.OK, redis.call('LLEN', outbox_key)}
