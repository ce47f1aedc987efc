"""Lua scripts behind :class:`kanal.adapters.redis_membership.RedisMembership`.

Ownership rule: every first/last answer of the cluster is computed here, inside one script
run, so it is atomic on the Redis server; Python never reads a membership fact and then
writes based on it. The per-entry helpers (``join_one``, ``leave_one``, ``sign_in_one``,
``sign_out_one``, ``add_conn_one``) are shared by the ordinary calls, by the reaping of dead
nodes and by :meth:`~kanal.adapters.redis_membership.RedisMembership.rebuild`, so a crashed
node's entries are removed by exactly the same logic as a live node's ``leave``.

Encodings the helpers rely on (the key layout is in :mod:`kanal.adapters.redis`):

* channel socket value: ``""`` (no member) or ``user_info_json NUL user_id``. Compact JSON
  never contains a raw NUL, so the first NUL separates the two.
* socket lists (presence users, signed-in users): socket ids joined by single spaces, in join
  order; socket ids are checked in Python to contain neither space nor NUL.
* ownership entries: ``c<socket_id>NUL<channel>``, ``u<socket_id>NUL<user_id>``,
  ``x<socket_id>``.

Every script receives the app's key base (``<prefix>{<app_id>}:``) as ``ARGV[1]`` and the
keys it names in ``KEYS``; the other per-app keys it builds from the base share the
``{app_id}`` hash slot, which is what Redis Cluster needs for a script to run.
"""

from __future__ import annotations

__all__ = [
    "ADD_CONNECTION",
    "CHANNELS",
    "CLAIM",
    "HEARTBEAT",
    "JOIN",
    "LEAVE",
    "REAP",
    "REBUILD",
    "REMOVE_CONNECTION",
    "ROSTER",
    "SIGN_IN",
    "SIGN_OUT",
]

# Shared helpers, prepended to every script that changes membership.
_HELPERS = r"""
local NUL = '\0'

local function has_token(list, tok)
  return string.find(' ' .. list .. ' ', ' ' .. tok .. ' ', 1, true) ~= nil
end

local function drop_token(list, tok)
  local padded = ' ' .. list .. ' '
  local s, e = string.find(padded, ' ' .. tok .. ' ', 1, true)
  if not s then return list end
  local out = string.sub(padded, 1, s) .. string.sub(padded, e + 1)
  return string.sub(out, 2, -2)
end

local function member_user(value)
  return string.sub(value, string.find(value, NUL, 1, true) + 1)
end

-- {refused, occupied, user_added, subscription_count}
local function join_one(base, own, channel, sid, value, max_users)
  local skey, ukey = base .. 's:' .. channel, base .. 'u:' .. channel
  local count = redis.call('HLEN', skey)
  if redis.call('HEXISTS', skey, sid) == 1 then return {0, 0, 0, count} end
  local added = 0
  if value ~= '' then
    local uid = member_user(value)
    local list = redis.call('HGET', ukey, uid)
    if not list and max_users > 0 and redis.call('HLEN', ukey) >= max_users then
      return {1, 0, 0, count}
    end
    if list then
      redis.call('HSET', ukey, uid, list .. ' ' .. sid)
    else
      redis.call('HSET', ukey, uid, sid)
      added = 1
    end
  end
  redis.call('HSET', skey, sid, value)
  redis.call('SADD', own, 'c' .. sid .. NUL .. channel)
  local occupied = 0
  if count == 0 then
    occupied = 1
    redis.call('ZADD', base .. 'chans', 0, channel)
  end
  return {0, occupied, added, count + 1}
end

-- nil if absent, else {vacated, user_removed_flag, user_id_or_empty, count, is_presence}
local function leave_one(base, own, channel, sid)
  local skey = base .. 's:' .. channel
  local value = redis.call('HGET', skey, sid)
  if not value then return nil end
  redis.call('HDEL', skey, sid)
  redis.call('SREM', own, 'c' .. sid .. NUL .. channel)
  local removed, uid, presence = 0, '', 0
  if value ~= '' then
    presence = 1
    local member = member_user(value)
    local ukey = base .. 'u:' .. channel
    local rest = drop_token(redis.call('HGET', ukey, member) or '', sid)
    if rest == '' then
      redis.call('HDEL', ukey, member)
      removed, uid = 1, member
    else
      redis.call('HSET', ukey, member, rest)
    end
  end
  local count = redis.call('HLEN', skey)
  local vacated = 0
  if count == 0 then
    vacated = 1
    redis.call('ZREM', base .. 'chans', channel)
  end
  return {vacated, removed, uid, count, presence}
end

-- 1 if the user was offline before, else 0
local function sign_in_one(base, own, uid, sid)
  local key = base .. 'online'
  local list = redis.call('HGET', key, uid)
  redis.call('SADD', own, 'u' .. sid .. NUL .. uid)
  if not list then
    redis.call('HSET', key, uid, sid)
    return 1
  end
  if not has_token(list, sid) then redis.call('HSET', key, uid, list .. ' ' .. sid) end
  return 0
end

-- -1 if the socket was not signed in as uid, 1 if it was the user's last one, else 0
local function sign_out_one(base, own, uid, sid)
  local key = base .. 'online'
  redis.call('SREM', own, 'u' .. sid .. NUL .. uid)
  local list = redis.call('HGET', key, uid)
  if not list or not has_token(list, sid) then return -1 end
  local rest = drop_token(list, sid)
  if rest == '' then
    redis.call('HDEL', key, uid)
    return 1
  end
  redis.call('HSET', key, uid, rest)
  return 0
end

-- 1 if counted (or already counted), 0 if the app is full
local function add_conn_one(base, own, sid, limit)
  local key = base .. 'conns'
  if redis.call('SISMEMBER', key, sid) == 0 then
    if limit > 0 and redis.call('SCARD', key) >= limit then return 0 end
    redis.call('SADD', key, sid)
  end
  redis.call('SADD', own, 'x' .. sid)
  return 1
end

local function remove_conn_one(base, own, sid)
  redis.call('SREM', base .. 'conns', sid)
  redis.call('SREM', own, 'x' .. sid)
end

-- Undo one ownership entry; appends an 8-field record to out when something changed:
-- 'c', sid, channel, vacated, removed_flag, user_id, count, is_presence
-- 'u', sid, user_id, last, 0, '', 0, 0
local function remove_entry(base, own, entry, out)
  local kind, rest = string.sub(entry, 1, 1), string.sub(entry, 2)
  if kind == 'x' then
    remove_conn_one(base, own, rest)
    return
  end
  local at = string.find(rest, NUL, 1, true)
  if not at then return end
  local sid, target = string.sub(rest, 1, at - 1), string.sub(rest, at + 1)
  if kind == 'c' then
    local r = leave_one(base, own, target, sid)
    if r then
      for _, v in ipairs({'c', sid, target, r[1], r[2], r[3], r[4], r[5]}) do
        table.insert(out, v)
      end
    end
  elseif kind == 'u' then
    local last = sign_out_one(base, own, target, sid)
    if last >= 0 then
      for _, v in ipairs({'u', sid, target, last, 0, '', 0, 0}) do table.insert(out, v) end
    end
  end
end
"""

# Appends user_id, user_info_json per presence user of a channel (the user_info of its
# earliest socket); used by JOIN and ROSTER.
_APPEND_ROSTER = r"""
local function append_roster(base, channel, out)
  local skey = base .. 's:' .. channel
  local users = redis.call('HGETALL', base .. 'u:' .. channel)
  for i = 1, #users, 2 do
    local first = string.match(users[i + 1], '^[^ ]+')
    local v = redis.call('HGET', skey, first) or ''
    local at = string.find(v, '\0', 1, true)
    table.insert(out, users[i])
    table.insert(out, at and string.sub(v, 1, at - 1) or 'null')
  end
end
"""

# KEYS: own.  ARGV: base, channel, socket_id, member value, max_users, want_roster.
# Reply: refused, occupied, user_added, count[, 1, user_id, user_info_json, ...]; the roster
# part is present iff the channel has presence users (user_info of each user's earliest socket).
JOIN = (
    _HELPERS
    + _APPEND_ROSTER
    + r"""
local base, channel, sid, value = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local reply = join_one(base, KEYS[1], channel, sid, value, tonumber(ARGV[5]))
if reply[1] == 1 or ARGV[6] ~= '1' then return reply end
if redis.call('HLEN', base .. 'u:' .. channel) == 0 then return reply end
table.insert(reply, 1)
append_roster(base, channel, reply)
return reply
"""
)

# KEYS: the channel's presence users hash.  ARGV: base, channel.
# Reply: user_id, user_info_json, ... (one read of a consistent snapshot).
ROSTER = (
    _APPEND_ROSTER
    + r"""
local out = {}
append_roster(ARGV[1], ARGV[2], out)
return out
"""
)

# KEYS: own.  ARGV: base, channel, socket_id.  Reply: nil or leave_one's record.
LEAVE = (
    _HELPERS
    + r"""
return leave_one(ARGV[1], KEYS[1], ARGV[2], ARGV[3])
"""
)

# KEYS: own.  ARGV: base, user_id, socket_id.
SIGN_IN = (
    _HELPERS
    + r"""
return sign_in_one(ARGV[1], KEYS[1], ARGV[2], ARGV[3])
"""
)

SIGN_OUT = (
    _HELPERS
    + r"""
return sign_out_one(ARGV[1], KEYS[1], ARGV[2], ARGV[3])
"""
)

# KEYS: own.  ARGV: base, socket_id, limit.
ADD_CONNECTION = (
    _HELPERS
    + r"""
return add_conn_one(ARGV[1], KEYS[1], ARGV[2], tonumber(ARGV[3]))
"""
)

# KEYS: own.  ARGV: base, socket_id.
REMOVE_CONNECTION = (
    _HELPERS
    + r"""
remove_conn_one(ARGV[1], KEYS[1], ARGV[2])
return 1
"""
)

# KEYS: chans.  ARGV: base, prefix.  Reply: name, subscription_count, user_count, ...
# A snapshot of every occupied channel under the prefix; the API calls this rarely.
CHANNELS = r"""
local base, prefix = ARGV[1], ARGV[2]
local names
if prefix == '' then
  names = redis.call('ZRANGEBYLEX', KEYS[1], '-', '+')
else
  names = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. prefix, '[' .. prefix .. '\255')
end
local out = {}
for _, name in ipairs(names) do
  table.insert(out, name)
  table.insert(out, redis.call('HLEN', base .. 's:' .. name))
  table.insert(out, redis.call('HLEN', base .. 'u:' .. name))
end
return out
"""

# KEYS: own (of the node being emptied).  ARGV: base, batch.
# Pops up to ``batch`` ownership entries and undoes each; reply: 8-field records then, last,
# the number of entries still left. SPOP makes each entry belong to exactly one caller, so
# two reapers (or a reaper and a rebuilding node) never report the same departure.
REAP = (
    _HELPERS
    + r"""
local base, own = ARGV[1], KEYS[1]
local out = {}
for _, entry in ipairs(redis.call('SPOP', own, tonumber(ARGV[2]))) do
  remove_entry(base, own, entry, out)
end
table.insert(out, redis.call('SCARD', own))
return out
"""
)

# KEYS: new own, then the own sets of retired leases.  ARGV: base, then (kind, socket_id,
# target, value) per entry this node really holds. An entry still recorded under a retired
# lease is moved as is (its membership is intact: entries and membership only ever change
# together); any other is added again like a fresh join / sign-in / connection. Reply:
# 6-field records of additions that changed a cluster fact: kind, socket_id, target,
# occupied_or_first, user_added, count.
REBUILD = (
    _HELPERS
    + r"""
local base, own = ARGV[1], KEYS[1]
local out = {}
for i = 2, #ARGV, 4 do
  local kind, sid, target, value = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local entry
  if kind == 'x' then entry = 'x' .. sid else entry = kind .. sid .. NUL .. target end
  local moved = false
  for k = 2, #KEYS do
    if redis.call('SREM', KEYS[k], entry) == 1 then moved = true end
  end
  if moved then
    redis.call('SADD', own, entry)
  elseif kind == 'c' then
    local r = join_one(base, own, target, sid, value, 0)
    if r[2] == 1 or r[3] == 1 then
      for _, v in ipairs({'c', sid, target, r[2], r[3], r[4]}) do table.insert(out, v) end
    end
  elseif kind == 'u' then
    if sign_in_one(base, own, target, sid) == 1 then
      for _, v in ipairs({'u', sid, target, 1, 0, 0}) do table.insert(out, v) end
    end
  else
    add_conn_one(base, own, sid, 0)
  end
end
return out
"""
)

# KEYS: leases, reaping.  ARGV: lease id, new expiry, first ('1' on the first heartbeat).
# Reply 1 if the lease is (now) held, 0 if it was lost: reaped, being reaped, or gone with a
# Redis restart. A lost lease is never renewed, so a node that was declared dead cannot
# silently keep entries that a reaper already reported as departed.
HEARTBEAT = r"""
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
if ARGV[3] == '1' or redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  return 1
end
return 0
"""

# KEYS: leases, reaping.  ARGV: now, claim deadline, own lease id.
# Moves every expired lease (except the caller's own) to ``reaping`` and re-claims reaping
# entries whose reaper missed its deadline (it died mid-way). Reply: the claimed lease ids;
# each is returned to exactly one caller per claim.
CLAIM = r"""
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])) do
  if id ~= ARGV[3] then
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZADD', KEYS[2], ARGV[2], id)
    table.insert(out, id)
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])) do
  redis.call('ZADD', KEYS[2], ARGV[2], id)
  table.insert(out, id)
end
return out
"""
