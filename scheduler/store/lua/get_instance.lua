-- get_instance: read an instance hash and the ExecutionStarted event of its current execution.
--
-- Payloads that are usually larger than a listpack value (the input, the tags)
-- live only in the start event, so that the instance hash stays compact; the
-- hash field `start` says where that event is: "inbox <index>" until the first
-- dispatch, "hist <index>" after it.
--
-- KEYS[1] inst   instance hash
-- KEYS[2] inbox  instance inbox list
-- KEYS[3] hist   instance history list
-- Returns {OK, flat field/value list, start event or false}, or {NOT_FOUND}.
local inst_key, inbox_key, hist_key = KEYS[1], KEYS[2], KEYS[3]

local fields = redis.call('HGETALL', inst_key)
if #fields == 0 then return {CODE.NOT_FOUND} end
local start = redis.call('HGET', inst_key, 'start')
local event = false
if start then
  local list, index = string.match(start, '^(%a+) (%d+)$')
  if list == 'inbox' then
    event = redis.call('LINDEX', inbox_key, index)
  elseif list == 'hist' then
    event = redis.call('LINDEX', hist_key, index)
  end
end
return {CODE.OK, fields, event}
