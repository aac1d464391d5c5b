-- prelude: shared by every script. When a script is loaded (store/scripts.py), this part and
-- the functions below that it uses are put in front of it, after generated constants: TERMINAL
-- (statuses an instance never leaves), IDLE (TERMINAL and SUSPENDED: statuses in which an
-- instance is not dispatched), KIND (work item kinds, as in lease members), ENTITY_MSG (kinds of
-- entity message: SIGNAL, CALL, LOCK, UNLOCK; see protocol.EntityMessage), WAKE (wake-up kinds:
-- DUE, STATUS, WORK, OUTBOX; see store/notify.py) and DEDUP (the de-duplication window and bound; see
-- protocol.DEDUP_WINDOW_MS). Every script returns {CODE.<name>, ...}: each
-- CODE.<name> is replaced by the code's number when loaded.
--
-- Every script's first three arguments are the same; its own arguments start at ARGV[4]:
-- ARGV[1] channel     pub/sub channel of the wake-ups, "<hub> <kind> <arg>" (see store/notify.py)
-- ARGV[2] hub         task hub name
-- ARGV[3] generation  the task hub's generation the caller knows (see hub_is_current)
-- A script that writes to a partition gets that partition's generation key as KEYS[1] and checks
-- it before anything else; its own keys start at KEYS[2].
local CHANNEL, HUB, GENERATION = ARGV[1], ARGV[2], tonumber(ARGV[3])

-- False once the task hub was deleted, or deleted and created again, since the caller read its
-- generation: the deletion sealed the partition with a newer (tombstone) generation, and nothing of
-- the caller's may be written. Generations only grow, so a hub created again after the deletion
-- has a newer one still.
local function hub_is_current(generation_key)
  return tonumber(redis.call('GET', generation_key) or 0) <= GENERATION
end

-- Redis server time in epoch ms: the one clock that every replica shares.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A whole number as digits (Lua writes large numbers as "2.5e+14").
local function int(n)
  return string.format('%d', n)
end

local function wake(kind, arg)
  redis.call('PUBLISH', CHANNEL, HUB .. ' ' .. kind .. ' ' .. arg)
end

-- fn(values[first..last]) in slices of at most 1000 values (Lua's unpack fails past a few thousand).
local function in_chunks(values, fn, first, last)
  first, last = first or 1, last or #values
  for i = first, last, 1000 do
    fn(unpack(values, i, math.min(i + 999, last)))
  end
end

local function rpush_all(key, values, first, last)
  in_chunks(values, function(...) redis.call('RPUSH', key, ...) end, first, last)
end

-- Bytes of values[first..last] (serialized events).
local function bytes_of(values, first, last)
  local n = 0
  for i = first or 1, last or #values do n = n + #values[i] end
  return n
end

-- The member of a claimed work item in a partition's leases zset.
local function lease_member(kind, item)
  return kind .. '|' .. item
end

-- The member of an instance in its partition's status index (keys.py PartitionKeys.by_status):
-- "<status>|<creation ms, 16 digits>|<id>", all at score 0, so the members of one status sort by
-- (creation ms, id): the order of queries, read with ZRANGEBYLEX. In hubs of schema 1 and 2 every
-- instance also has a member under status "*" from its creation to its purge (what a query without a
-- status filter reads there; keys.py SCHEMA_VERSION).
local function status_member(status, created_ms, instance_id)
  return status .. '|' .. string.format('%016d', tonumber(created_ms)) .. '|' .. instance_id
end

-- Move an instance from status `from` to status `to` in its partition's status index (either may be
-- false: the instance enters or leaves the index); the instance hash must still hold its `created_ms`.
local function index_status(index_key, inst_key, instance_id, from, to)
  local created = redis.call('HGET', inst_key, 'created_ms')
  if not created then return end
  if from then redis.call('ZREM', index_key, status_member(from, created, instance_id)) end
  if to then redis.call('ZADD', index_key, 0, status_member(to, created, instance_id)) end
end

-- Put a new instance (`add`) into its partition's status index, under its status (and "*" with
-- `all`), or take one that goes (purged, replaced) out of it (and out of "*", wherever it may be).
local function index_instance(index_key, inst_key, instance_id, status, add, all)
  if add then
    index_status(index_key, inst_key, instance_id, false, status)
    if all then index_status(index_key, inst_key, instance_id, false, '*') end
  else
    index_status(index_key, inst_key, instance_id, status, false)
    index_status(index_key, inst_key, instance_id, '*', false)
  end
end

-- Count an instance under status `to` instead of `from` in its partition's stats, and move it
-- in the partition's status index: every status change of an existing instance goes through here.
local function count_status(stats_key, index_key, inst_key, instance_id, from, to)
  redis.call('HINCRBY', stats_key, from, -1)
  redis.call('HINCRBY', stats_key, to, 1)
  index_status(index_key, inst_key, instance_id, from, to)
end

-- Wake the work streams for a queue that is about to get work (the one wake-up rule of every
-- script that queues work): when the queue is empty, or when it holds a few items whose head has
-- waited more than a second (work no stream takes, say for its filters: the new item must not wait
-- behind it for a look; a long queue is a backlog that streams with room drain anyway, and is not
-- announced item by item).
local function wake_streams(queue_key, now)
  local queued = redis.call('ZCARD', queue_key)
  if queued == 0 then
    wake(WAKE.WORK, queue_key)
  elseif queued < 16 then
    local head = redis.call('ZRANGE', queue_key, 0, 0, 'WITHSCORES')
    if tonumber(head[2]) < now - 1000 then wake(WAKE.WORK, queue_key) end
  end
end

-- Queue `member` on a work queue zset (ready instances, activity items), keeping an earlier
-- place; work streams are woken by wake_streams' rule, unless `quiet` (the caller claims it in the
-- same step). True when `member` was not queued before.
local function push_work(queue_key, member, now, quiet)
  if not quiet then wake_streams(queue_key, now) end
  return redis.call('ZADD', queue_key, 'NX', now, member) == 1
end

-- Put `member` on a due set at `due_ms` (with `earlier_only`, an entry already there only moves
-- earlier); the promoters are woken when it is the partition's earliest entry.
local function add_due(due_key, member, due_ms, earlier_only)
  local head = redis.call('ZRANGE', due_key, 0, 0, 'WITHSCORES')
  if earlier_only then
    redis.call('ZADD', due_key, 'LT', due_ms, member)
  else
    redis.call('ZADD', due_key, due_ms, member)
  end
  if not head[2] or due_ms < tonumber(head[2]) then wake(WAKE.DUE, int(due_ms) .. ' ' .. due_key) end
end

-- An instance's state as get_instance.lua returns it: {OK, flat field/value list of its hash, the
-- ExecutionStarted event of its current execution or false}; {NOT_FOUND} when there is no instance.
-- The hash field `start` says where that event is: "inbox <index>" until the first dispatch,
-- "hist <index>" after it.
local function instance_state(inst_key, inbox_key, hist_key)
  local fields = redis.call('HGETALL', inst_key)
  if #fields == 0 then return {CODE.NOT_FOUND} end
  local list, index = string.match(redis.call('HGET', inst_key, 'start') or '', '^(%a+) (%d+)$')
  local event = false
  if list == 'inbox' then
    event = redis.call('LINDEX', inbox_key, index)
  elseif list == 'hist' then
    event = redis.call('LINDEX', hist_key, index)
  end
  return {CODE.OK, fields, event}
end

-- True when an instance that is not in an episode has something for a next one: events in its
-- inbox, an event that found no room (`overflow`: the next dispatch fails it), or a timer whose time
-- has come (it may have come due while an episode ran: the promoter took its due entry, and a claim
-- that found the instance leased took it off ready). Every step that ends an episode and leaves the
-- instance runnable makes it ready when this holds.
local function wants_episode(inst_key, inbox_key, timers_key, now)
  if redis.call('LLEN', inbox_key) > 0 or redis.call('HEXISTS', inst_key, 'overflow') == 1 then return true end
  return #redis.call('ZRANGEBYSCORE', timers_key, '-inf', now, 'LIMIT', 0, 1) > 0
end

-- Executions: an instance's execution id changes when it continues as new or is created again (a
-- new execution that waits for nothing the old one waited for), and when a worker rewinds it (the
-- same execution, run again: it still waits for what was addressed to the ids it was rewound from,
-- kept in `rewound_from`, newline-separated, the last 16 of them: see note_rewound).
local function is_execution(inst_key, execution)
  local h = redis.call('HMGET', inst_key, 'execution_id', 'rewound_from')
  if h[1] == execution then return true end
  return h[2] ~= false and string.find('\n' .. h[2] .. '\n', '\n' .. execution .. '\n', 1, true) ~= nil
end

-- Note that the instance's execution `previous` (its id before a rewind changed it) is now `current`.
local function note_rewound(inst_key, previous, current)
  if not previous or previous == current then return end
  local kept = redis.call('HGET', inst_key, 'rewound_from')
  local ids = {}
  if kept then
    for id in string.gmatch(kept, '[^\n]+') do ids[#ids + 1] = id end
  end
  ids[#ids + 1] = previous
  local first = math.max(1, #ids - 15)
  redis.call('HSET', inst_key, 'rewound_from', table.concat(ids, '\n', first, #ids))
end

-- De-duplication, one rule for instances and entities: the ids of the messages an instance or an
-- entity took are kept in a zset (score = when, Redis ms) for DEDUP.WINDOW_MS, and at most DEDUP.MAX
-- of them (the oldest go first); a message delivered again within that window changes nothing. The
-- set expires when nothing came for a whole window, so its memory is bounded either way.
local function seen_before(seen_key, message_id)
  return redis.call('ZSCORE', seen_key, message_id) ~= false
end

local function remember(seen_key, message_id, now)
  redis.call('ZADD', seen_key, now, message_id)
  redis.call('ZREMRANGEBYSCORE', seen_key, '-inf', now - DEDUP.WINDOW_MS)
  if redis.call('ZCARD', seen_key) > DEDUP.MAX then redis.call('ZREMRANGEBYRANK', seen_key, 0, -DEDUP.MAX - 1) end
  redis.call('PEXPIRE', seen_key, DEDUP.WINDOW_MS)
end

-- Append an event to an instance's inbox, counting its bytes in the instance's `size` (the bytes
-- of its history and inbox: what its next work item carries). A RUNNING instance is made ready
-- to process it (`quiet`: see push_work); a PENDING one gets it with its first run, a SUSPENDED
-- one once it is resumed.
local function deliver(inst_key, inbox_key, ready_key, instance_id, status, event, now, quiet)
  redis.call('RPUSH', inbox_key, event)
  redis.call('HINCRBY', inst_key, 'size', #event)
  redis.call('HSET', inst_key, 'updated_ms', now)
  if status == 'RUNNING' then push_work(ready_key, instance_id, now, quiet) end
end

-- Nil when one more event of `event_bytes` fits the instance's inbox (at most `max_events`
-- pending events) and its next work item (at most `max_bytes` of history and inbox); else the
-- code that says which bound it would pass.
local function inbox_refusal(inst_key, inbox_key, event_bytes, max_events, max_bytes)
  if redis.call('LLEN', inbox_key) >= max_events then return CODE.INBOX_FULL end
  local size = tonumber(redis.call('HGET', inst_key, 'size') or 0)
  if size + event_bytes > max_bytes then return CODE.TOO_LARGE end
  return nil
end

-- Claim a ready instance for a worker under a lease (see claim_orchestration.lua, which says what
-- it does; complete_activity.lua claims this way too). `k` holds the keys: ready, leases, inst,
-- inbox, hist, stats, by_status, timers, due. Returns {OK, lease expiry, flat hash, history, new events} or a
-- refusal ({NOT_READY}, {NOT_FOUND}, {WRONG_STATUS, status}, {LEASED}).
local function claim_instance(k, instance_id, token, lease_ms, episode_start)
  local member = lease_member(KIND.ORCHESTRATION, instance_id)
  if not redis.call('ZSCORE', k.ready, instance_id) then return {CODE.NOT_READY} end
  local h = redis.call('HMGET', k.inst, 'status', 'rewinding')
  local status, rewinding = h[1], h[2]
  local now = now_ms()
  local held = redis.call('ZSCORE', k.leases, member)
  local refusal = nil
  if not status then
    refusal = {CODE.NOT_FOUND}
  elseif IDLE[status] then
    refusal = {CODE.WRONG_STATUS, status}
  elseif held and tonumber(held) > now then
    refusal = {CODE.LEASED}
  end
  redis.call('ZREM', k.ready, instance_id)
  if refusal then return refusal end

  local fired = redis.call('ZRANGEBYSCORE', k.timers, '-inf', now)
  local next_timer = redis.call('ZRANGE', k.timers, #fired, #fired, 'WITHSCORES')  -- after the fired ones
  if #fired > 0 then
    rpush_all(k.inbox, fired)
    redis.call('HINCRBY', k.inst, 'size', bytes_of(fired))
    redis.call('ZREMRANGEBYSCORE', k.timers, '-inf', now)
  end
  if next_timer[2] then
    add_due(k.due, instance_id, tonumber(next_timer[2]), false)
  elseif #fired > 0 then
    redis.call('ZREM', k.due, instance_id)  -- a passed entry of a timer delivered now, not yet promoted
  end

  local expiry = now + lease_ms
  local claimed_n = redis.call('LLEN', k.inbox)
  if rewinding then claimed_n = math.min(claimed_n, 1) end
  redis.call('ZADD', k.leases, expiry, member)
  redis.call('HSET', k.inst, 'lease', token, 'claimed_n', claimed_n, 'episode_start', episode_start)
  if status == 'PENDING' then
    redis.call('HSET', k.inst, 'status', 'RUNNING', 'updated_ms', now)
    count_status(k.stats, k.by_status, k.inst, instance_id, 'PENDING', 'RUNNING')
    wake(WAKE.STATUS, instance_id)
  end
  local events = {}
  if claimed_n > 0 then events = redis.call('LRANGE', k.inbox, 0, claimed_n - 1) end
  return {CODE.OK, expiry, redis.call('HGETALL', k.inst), redis.call('LRANGE', k.hist, 0, -1), events}
end

-- Move every event of an instance's inbox to the end of its history (`start` follows its event).
local function inbox_to_history(inst_key, inbox_key, hist_key)
  local offset = redis.call('LLEN', hist_key)
  rpush_all(hist_key, redis.call('LRANGE', inbox_key, 0, -1))
  redis.call('DEL', inbox_key)
  local index = string.match(redis.call('HGET', inst_key, 'start') or '', '^inbox (%d+)$')
  if index then redis.call('HSET', inst_key, 'start', 'hist ' .. (offset + tonumber(index))) end
end

-- Write args[first..last] (encoded outbox messages) to a partition's outbox and wake the relays
-- (the wake-up names the outbox: a relay reads that partition).
local function post_messages(outbox_key, args, first, last)
  if last < first then return end
  rpush_all(outbox_key, args, first, last)
  wake(WAKE.OUTBOX, outbox_key)
end

-- Queue the activity work items of args[first..last] (item, serialized ActivityRequest pairs).
-- With `claim` ({leases = key, tokens = key, expiry = ms, first = index}), they are not queued but
-- claimed at once for the caller's work stream, under the claim tokens args[claim.first ...] (one per
-- item, in order), as claim_activity.lua would claim them.
local function queue_activities(payloads_key, activities_key, args, first, last, now, claim)
  for i = first, last, 2 do
    redis.call('HSET', payloads_key, args[i], args[i + 1])
    if claim then
      redis.call('ZADD', claim.leases, claim.expiry, lease_member(KIND.ACTIVITY, args[i]))
      redis.call('HSET', claim.tokens, args[i], args[claim.first + (i - first) / 2])
    else
      push_work(activities_key, args[i], now)
    end
  end
end

-- Keep the timers of args[first..last] (fire time ms, serialized TimerFired pairs) on the instance;
-- with `armed`, the instance is put on the due set at the earliest (a suspended one is not: its
-- claim after it is resumed arms them).
local function keep_timers(timers_key, due_key, instance_id, args, first, last, armed)
  for i = first, last, 2 do
    redis.call('ZADD', timers_key, args[i], args[i + 1])
    if armed then add_due(due_key, instance_id, tonumber(args[i]), true) end
  end
end

-- Drop the claim on an orchestration work item: its lease and the claim fields of its hash.
local function drop_claim(leases_key, inst_key, instance_id)
  redis.call('ZREM', leases_key, lease_member(KIND.ORCHESTRATION, instance_id))
  redis.call('HDEL', inst_key, 'lease', 'claimed_n', 'episode_start')
end

-- The header of an entity message (protocol.EntityMessage): its kind, id, parent, arg and lock
-- set, and where its payload starts.
local function entity_header(record)
  local fields, from = {}, 1
  for i = 1, 5 do
    local at = string.find(record, '\n', from, true)
    fields[i] = string.sub(record, from, at - 1)
    from = at + 1
  end
  return fields[1], fields[2], fields[3], fields[4], fields[5], from
end

-- The keys of an entity, passed as five KEYS from `first` on (store/keys.py EntityKeys).
local function entity_keys(first)
  return {hash = KEYS[first], ops = KEYS[first + 1], held = KEYS[first + 2], later = KEYS[first + 3],
          seen = KEYS[first + 4]}
end

-- Queue a message on an entity: with what may run now, or, while another orchestration holds the
-- entity's lock, with what waits for the unlock. A locked entity runs only its holder's calls and
-- takes only the unlock of its critical section.
local function entity_queue(ek, record)
  local kind, id, parent = entity_header(record)
  local lock = redis.call('HMGET', ek.hash, 'locked_by', 'lock_section')
  if not lock[1] or (kind == ENTITY_MSG.CALL and parent == lock[1])
      or (kind == ENTITY_MSG.UNLOCK and id == lock[2]) then
    redis.call('RPUSH', ek.ops, record)
  else
    redis.call('RPUSH', ek.held, record)
  end
end

-- Queue the entity's delayed signals whose time has come (in due order) and keep the entity on the
-- due set at the time of its next one.
local function entity_release_due(ek, due_key, entity_id, now)
  local due = redis.call('ZRANGEBYSCORE', ek.later, '-inf', now)
  for _, record in ipairs(due) do entity_queue(ek, record) end
  if #due > 0 then redis.call('ZREMRANGEBYSCORE', ek.later, '-inf', now) end
  local nxt = redis.call('ZRANGE', ek.later, 0, 0, 'WITHSCORES')
  if nxt[2] then add_due(due_key, entity_id, tonumber(nxt[2]), false) end
end

-- Unlock an entity: what waited for the unlock goes back to the head of its queue, in order.
local function entity_unlock(ek)
  redis.call('HDEL', ek.hash, 'locked_by', 'lock_section')
  local held = redis.call('LRANGE', ek.held, 0, -1)
  redis.call('DEL', ek.held)
  for i = #held, 1, -1 do redis.call('LPUSH', ek.ops, held[i]) end
end

-- Run the lock requests and unlocks at the head of an entity's queue (only while no batch is out):
-- a lock request locks the entity for its critical section, holds back what else waits, and goes on
-- through the outbox to the next entity of its lock set, or, from the last one, grants the lock to the
-- orchestration; the unlock of the critical section unlocks it; a stale unlock is dropped. Returns
-- true when an operation (a worker's) is at the head, false when the queue is empty.
local function entity_settle(ek, outbox_key)
  while true do
    local head = redis.call('LINDEX', ek.ops, 0)
    if not head then return false end
    local kind, id, parent, arg, locks, from = entity_header(head)
    if kind == ENTITY_MSG.SIGNAL or kind == ENTITY_MSG.CALL then return true end
    redis.call('LPOP', ek.ops)
    local lock = redis.call('HMGET', ek.hash, 'locked_by', 'lock_section')
    if kind == ENTITY_MSG.LOCK and lock[1] then
      redis.call('RPUSH', ek.held, head)  -- locked meanwhile: it waits its turn
    else
      redis.call('HINCRBY', ek.hash, 'size', -#head)
      if kind == ENTITY_MSG.LOCK then
        redis.call('HSET', ek.hash, 'locked_by', parent, 'lock_section', id)
        if redis.call('LLEN', ek.held) == 0 then
          if redis.call('EXISTS', ek.ops) == 1 then redis.call('RENAME', ek.ops, ek.held) end
        else
          rpush_all(ek.held, redis.call('LRANGE', ek.ops, 0, -1))
          redis.call('DEL', ek.ops)
        end
        local set = {}
        for entity in string.gmatch(locks, '[^\t]+') do set[#set + 1] = entity end
        local pos, message = tonumber(arg) + 1, nil
        if pos < #set then
          message = id .. ':' .. pos .. '\nentity\n' .. set[pos + 1] .. '\n' .. ENTITY_MSG.LOCK .. '\n' .. id .. '\n'
            .. parent .. '\n' .. pos .. '\n' .. locks .. '\n' .. string.sub(head, from)
        else
          message = id .. ':granted\nevent\n' .. parent .. '\n' .. string.sub(head, from)
        end
        redis.call('RPUSH', outbox_key, message)
        wake(WAKE.OUTBOX, outbox_key)
      elseif kind == ENTITY_MSG.UNLOCK and lock[2] == id then
        entity_unlock(ek)
      end
    end
  end
end

-- Drop the claim on an entity's batch; its operations stay queued (a completion trims those done).
local function entity_drop_claim(ek, leases_key, entity_id)
  redis.call('ZREM', leases_key, lease_member(KIND.ENTITY, entity_id))
  redis.call('HDEL', ek.hash, 'lease', 'claimed_n')
end
