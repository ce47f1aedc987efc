"""Lua scripts behind :class:`kanal.webhooks.cluster_queue.RedisWebhookQueue`.

Ownership rule: the cluster-wide grace period of removal webhooks (webhooks.md §4) is decided
here, inside single script runs, so "is a removal of this channel (user) held?" and the
resulting hold / cancel / enqueue are atomic on the Redis server whichever node emitted the
events. Python never reads a hold and then writes based on it. The key layout is documented in
:mod:`kanal.webhooks.cluster_queue`; every key a script touches shares the ``{wh}`` hash tag, so all
of them live in one Redis Cluster slot.

Encodings:

* hold value: ``event_json NUL app_id``. Compact JSON never contains a raw NUL, so the first
  NUL separates the two whatever the app id holds.
* stream entry fields: ``a`` app id, ``e`` event JSON (webhooks.md §3 object), ``t`` the Unix
  time in ms the webhook was created, which becomes the request's ``time_ms`` (§2).
* numbers handed back to Redis are formatted with ``%.0f``: Redis would otherwise print a Lua
  number of 13 digits in exponent notation.

Time: holds are due at the Redis server's ``TIME`` plus the grace period, so the grace period
does not depend on the agreement of the nodes' clocks.
"""

from __future__ import annotations

__all__ = ["DEMAND", "EMIT", "INSPECT", "LEAD", "PROMOTE", "RESIGN"]

_HELPERS = r"""
local NUL = '\0'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function num(x)
  return string.format('%.0f', x)
end

local function enqueue(stream, maxlen, app, event, ms)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'a', app, 'e', event, 't', ms)
end

-- Move one held removal to the stream, stamped with its due time; false if none was held.
local function release(stream, hold, due, maxlen, key)
  local value = redis.call('HGET', hold, key)
  local score = redis.call('ZSCORE', due, key)
  redis.call('HDEL', hold, key)
  redis.call('ZREM', due, key)
  if not value then return false end
  local cut = string.find(value, NUL, 1, true)
  enqueue(stream, maxlen, string.sub(value, cut + 1), string.sub(value, 1, cut - 1),
    score or num(now_ms()))
  return true
end
"""

#: KEYS: stream, hold, due, batch marker. ARGV: grace_ms, maxlen, marker_ttl_ms, then per
#: event ``kind`` (``o`` opening, ``c`` closing, ``n`` other), grace key, app id, event JSON,
#: created ms. Returns ``{queued, held, cancelled}``, or ``{-1, 0, 0}`` when this batch was
#: already applied (a retry after a lost reply: the marker makes the script idempotent).
EMIT = (
    _HELPERS
    + r"""
local stream, hold, due = KEYS[1], KEYS[2], KEYS[3]
local grace, maxlen = tonumber(ARGV[1]), ARGV[2]
if not redis.call('SET', KEYS[4], '1', 'NX', 'PX', ARGV[3]) then
  return {-1, 0, 0}
end
local now = now_ms()
local queued, held, cancelled = 0, 0, 0
for i = 4, #ARGV, 5 do
  local kind, key, app, event, ms = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  if grace <= 0 or kind == 'n' then
    enqueue(stream, maxlen, app, event, ms)
    queued = queued + 1
  elseif kind == 'c' then
    -- webhooks.md §4: hold the removal. Two in a row can only come from a malformed stream:
    -- pass the first on rather than lose it (as kanal.protocol.webhook_grace does).
    if release(stream, hold, due, maxlen, key) then queued = queued + 1 end
    redis.call('HSET', hold, key, event .. NUL .. app)
    -- Holds of one batch keep their occurrence order even when due in the same millisecond
    -- (member_removed before channel_vacated): a sub-millisecond step per event.
    redis.call('ZADD', due, string.format('%.4f', now + grace + (i - 4) / 5 / 1024), key)
    held = held + 1
  else
    local score = redis.call('ZSCORE', due, key)
    if score and tonumber(score) > now then
      -- §4: undone within the grace period, so neither webhook is sent.
      redis.call('HDEL', hold, key)
      redis.call('ZREM', due, key)
      cancelled = cancelled + 1
    else
      -- A removal already due but not yet promoted goes first: occurrence order.
      if release(stream, hold, due, maxlen, key) then queued = queued + 1 end
      enqueue(stream, maxlen, app, event, ms)
      queued = queued + 1
    end
  end
end
return {queued, held, cancelled}
"""
)

#: KEYS: stream, hold, due. ARGV: maxlen, limit. Moves up to ``limit`` due holds to the
#: stream. Returns ``{promoted, ms until the next hold is due or -1}`` (Redis time).
PROMOTE = (
    _HELPERS
    + r"""
local stream, hold, due = KEYS[1], KEYS[2], KEYS[3]
local now = now_ms()
local ready = redis.call('ZRANGEBYSCORE', due, '-inf', num(now), 'LIMIT', 0, ARGV[2])
local promoted = 0
for _, key in ipairs(ready) do
  if release(stream, hold, due, ARGV[1], key) then promoted = promoted + 1 end
end
local head = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
local wait = -1
if head[2] then wait = math.max(0, tonumber(head[2]) - now) end
return {promoted, wait}
"""
)

#: KEYS: leader. ARGV: consumer, lease_ms. Take or extend the lease: 2 taken (a new term),
#: 1 extended, 0 another consumer holds it.
LEAD = r"""
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 2
"""

#: KEYS: leader. ARGV: consumer. Give the lease up if this consumer holds it.
RESIGN = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

#: KEYS: stream. ARGV: group, consumer. Deletes the group's other consumers that hold no
#: pending entry (names of departed nodes would pile up otherwise) and returns how many pending
#: entries the others hold: the leader reads no new entry while that is not 0 (order).
INSPECT = r"""
local foreign = 0
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending
  for i = 1, #info, 2 do
    if info[i] == 'name' then name = info[i + 1] end
    if info[i] == 'pending' then pending = tonumber(info[i + 1]) end
  end
  if name ~= ARGV[2] then
    if pending == 0 then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    else
      foreign = foreign + pending
    end
  end
end
return foreign
"""

#: KEYS: the hooks' demand (a zset: ``app_id NUL event name`` -> when it expires, Redis ms).
#: ARGV: ttl_ms, then the members this process advertises (none: it only reads). Drops what
#: expired, (re)advertises, and returns every member still advertised by some process. The key
#: itself expires with the last advertisement, so a cluster whose hooks are gone keeps nothing.
DEMAND = (
    _HELPERS
    + r"""
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', num(now))
if #ARGV > 1 then
  local expires = num(now + tonumber(ARGV[1]))
  for i = 2, #ARGV do redis.call('ZADD', KEYS[1], expires, ARGV[i]) end
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
)
