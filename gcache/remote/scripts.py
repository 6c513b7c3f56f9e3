"""Server-side Lua scripts. Every key a script touches shares the entity's ``{...}`` hash tag.

Time stamps are microseconds of the Redis server clock (``TIME``), the one clock all staleness
decisions use. Numbers written into Redis go through ``string.format('%.0f')`` so they stay exact
integers (Redis would otherwise render large Lua numbers in exponent form).
"""

from __future__ import annotations

__all__ = [
    "ANNOUNCE_FLUSH",
    "DELETE",
    "INVALIDATE",
    "INVALIDATE_ORIGINAL",
    "READ_ORIGINAL",
    "READ_TRACKED",
    "READ_WITH_TTL",
    "UNLOCK",
    "WRITE_ORIGINAL",
    "WRITE_TRACKED",
]

# A tracked read's value: GETRANGE of at most ``limit`` bytes and one more when there is a limit
# (its '' read as none), else GET; false for none.
_VALUE = """
local function _VALUE(key, limit)
  if not limit then return redis.call('GET', key) end
  local v = redis.call('GETRANGE', key, 0, limit)
  if v == '' then return false end
  return v
end
"""

# A fence key that holds a string holds the original gcache's watermark (milliseconds), written
# by a process of the original library or one of ours with legacy_compat on the same prefix: the
# scripts below make it a fence (dropping the string) with that watermark in microseconds, or
# server-now when it is not a number (fail closed: nothing stamped before it is trusted). No
# entry of ours carries the new fence's nonce, so every one written before is refused.
_FOREIGN_WATERMARK = """
local function _FOREIGN(key, t)
  local ms = tonumber(redis.call('GET', key))
  if ms then return string.format('%.0f', ms * 1000) end
  return string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
end
"""

# The replication id of this node's history: master_replid of INFO replication (ROLE may not run
# in a script; INFO may). A primary's own; a replica's is its primary's; a replica promoted takes
# a new one (the old one becomes master_replid2), and a restarted primary starts with a new one.
# Every fence records the id of the history it was created or last raised in ('r'): a fence whose
# 'r' is not this node's id was inherited from a history this node may not hold all of (a raise
# acknowledged by a primary that died before it replicated), and nothing under it is trusted.
# A server that refuses INFO (fakeredis, an ACL without +info) gives '': every fence the same id,
# failover fencing off (protocol._info_refused reads INFO's refusal so on the fast path; the read
# script tells the caller, which warns).
# Every script stamps and checks 'r' whatever GCacheConfig(failover_fencing) says: a process
# without failover fencing only skips the check on its reads of an existing fence (the plain
# reads send no INFO; READ_TRACKED's ARGV[5]), so processes of both kinds share fences, each made
# anew at most once per failover, by whichever script first finds it of another history.
_REPLID = """
local function _REPLID()
  local ok, s = pcall(redis.call, 'INFO', 'replication')
  if not ok or type(s) ~= 'string' then return '' end
  return string.match(s, 'master_replid:(%x+)') or ''
end
"""

# The tracked read. On a single server the read is first sent as these commands without the
# script (protocol.fence_read: a script costs the server 15 µs more than a GET); the script runs
# when that finds no fence, to create it with the read, and on a cluster.
# KEYS[1] value key, KEYS[2] fence (watermark) key
# ARGV[1] nonce for a fence this read has to create (8 bytes), ARGV[2] its life (ms): the compute
#         limit, which the write after a miss extends
# ARGV[3] '1' to return the value's PTTL (a fail-safe use case), '' not to
# ARGV[4] failover buffer (ms): a fence of another history is made anew with the watermark
#         server-now + this (never lower than its own)
# ARGV[5] '1' to trust an existing fence whatever its history (GCacheConfig(failover_fencing=
#         False): no INFO on a read that finds one), '' to check it
# ARGV[6] (optional) the read limit: at most this many bytes of the value and one more are read
#         (GETRANGE, which answers '' for none, read as none); absent: the whole value (GET)
# A missing fence is created here, so every read carries a nonce: if the fence is lost while the
# function runs (evicted, Redis restarted), the write sees another nonce, or none, and refuses.
# A fence of another replication history (its 'r' is not this node's id, or it has none: written
# before fences had one) is made anew the same way, with a new nonce: every entry under the old
# one is refused (a failover invalidates each tracked entity once; see _REPLID).
# Returns {value or nil, fence nonce, watermark (us), server time seconds, and microseconds,
# 1 if INFO was refused (failover fencing off on this server) else 0, the value's PTTL (ms) or
# nil}. The caller joins the two halves of the time: Lua arithmetic and string.format cost the
# server more than the reads themselves. The PTTL tells a fail-safe use case whether the value is
# past its TTL, in its grace period.
READ_TRACKED = (
    _VALUE
    + _FOREIGN_WATERMARK
    + _REPLID
    + """
local t = redis.call('TIME')
local v = _VALUE(KEYS[1], ARGV[6])
local r = false
if ARGV[5] ~= '1' then r = _REPLID() end
local ok, f = pcall(redis.call, 'HMGET', KEYS[2], 'n', 'w', 'r')
if not ok then
  f = {false, _FOREIGN(KEYS[2], t)}
  redis.call('DEL', KEYS[2])
end
if f[1] and r and f[3] ~= r then
  local w = tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[4]) * 1000
  local old = tonumber(f[2]) or 0
  if old > w then w = old end
  f = {false, string.format('%.0f', w)}
end
if not f[1] then
  local w = f[2] or '0'
  r = r or _REPLID()
  redis.call('HSET', KEYS[2], 'n', ARGV[1], 'w', w, 'r', r)
  if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
  end
  f = {ARGV[1], w}
end
local pttl = nil
if v and ARGV[3] == '1' then pttl = redis.call('PTTL', KEYS[1]) end
local refused = 0
if r == '' then refused = 1 end
return {v, f[1], f[2], t[1], t[2], refused, pttl}
"""
)

# KEYS[1] value key. An untracked read of a fail-safe use case: {value or nil, its PTTL (ms)}.
# ARGV[1] (optional) the read limit, as READ_TRACKED's ARGV[6] ('' for none, with GETRANGE)
READ_WITH_TTL = """
local v
if ARGV[1] then v = redis.call('GETRANGE', KEYS[1], 0, ARGV[1]) else v = redis.call('GET', KEYS[1]) end
return {v, redis.call('PTTL', KEYS[1])}
"""

# KEYS[1] lock key, ARGV[1] the holder's token. Releases the lock only if this holder still has
# it (it may have expired and been taken by another process). Returns 1 released, 0 not held.
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] value key, KEYS[2] fence key
# ARGV[1] t0: server time (us) of the read before this write (the one that missed)
# ARGV[2] entry TTL (ms)
# ARGV[3] fence nonce that read saw (it created the fence if there was none)
# ARGV[4] the entry, stamped t0 and carrying that nonce: the writer fills (and signs) every field
# ARGV[5] compute limit (us): a read older than this may have outlived an invalidation fence
# ARGV[6] nonce for the fence this write makes anew when it is of another history (8 bytes),
# ARGV[7] the failover buffer (ms), as READ_TRACKED's ARGV[4]
# Returns 1 stored; 0 invalidated at or after t0; -1 fence replaced or gone since the read, or of
# another replication history (a failover since: the read may have been on the old primary, or,
# without failover fencing, trusted an inherited fence); -2 too slow. A fence of another history
# is made anew here as READ_TRACKED makes it: a process without failover fencing, whose reads
# trust it, would otherwise have every write-back refused until the fence expires.
WRITE_TRACKED = (
    _REPLID
    + """
local t = redis.call('TIME')
local t0 = tonumber(ARGV[1])
if tonumber(t[1]) * 1000000 + tonumber(t[2]) - t0 > tonumber(ARGV[5]) then return -2 end
local ok, f = pcall(redis.call, 'HMGET', KEYS[2], 'n', 'w', 'r')
if not ok or f[1] ~= ARGV[3] then return -1 end
local r = _REPLID()
if f[3] ~= r then
  local w = tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[7]) * 1000
  local old = tonumber(f[2]) or 0
  if old > w then w = old end
  redis.call('HSET', KEYS[2], 'n', ARGV[6], 'w', string.format('%.0f', w), 'r', r)
  local life = math.ceil(tonumber(ARGV[5]) / 1000)
  if redis.call('PTTL', KEYS[2]) < life then
    redis.call('PEXPIRE', KEYS[2], life)
  end
  return -1
end
local w = tonumber(f[2])
if not w or w >= t0 then return 0 end
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[4], 'PX', ttl)
if redis.call('PTTL', KEYS[2]) < ttl + 1000 then
  redis.call('PEXPIRE', KEYS[2], ttl + 1000)
end
return 1
"""
)

# KEYS[1] fence key
# ARGV[1] future buffer (ms), ARGV[2] nonce for a fence this call has to create (8 bytes),
# ARGV[3] minimum fence life (ms): the compute limit, so no write that read before this
#         invalidation can find the fence gone,
# ARGV[4] invalidation bus channel, ARGV[5] the entity ({...} part of the keys),
# ARGV[6] origin: the publishing GCache instance, which has applied the change already
# ARGV[7] the message's signature ('': unsigned; see gcache.bus)
# Publishes "i|<server now us>|<buffer ms>|<origin>|<entity>" (signed: "I|...|<origin>|<signature>|
# <entity>") in the same step, so the message and the watermark cannot disagree. Returns the
# watermark (us) now in force; it never goes down. A fence of another replication history (see
# _REPLID) is made anew, with a new nonce: its entries may carry stamps of another server's clock,
# which a watermark of this one's does not bound.
INVALIDATE = (
    _FOREIGN_WATERMARK
    + _REPLID
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local buffer = tonumber(ARGV[1])
local w = now + buffer * 1000
local r = _REPLID()
local ok, f = pcall(redis.call, 'HMGET', KEYS[1], 'n', 'w', 'r')
if not ok then
  local foreign = tonumber(_FOREIGN(KEYS[1], t))
  if foreign > w then w = foreign end
  redis.call('DEL', KEYS[1])
  f = {false}
end
local current = tonumber(f[2]) or 0
if current > w then w = current end
if f[1] and f[3] == r then
  redis.call('HSET', KEYS[1], 'w', string.format('%.0f', w))
else
  redis.call('HSET', KEYS[1], 'n', ARGV[2], 'w', string.format('%.0f', w), 'r', r)
end
local life = buffer + tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < life then
  redis.call('PEXPIRE', KEYS[1], life)
end
local kind, target = 'i|', ARGV[5]
if ARGV[7] ~= '' then kind, target = 'I|', ARGV[7] .. '|' .. ARGV[5] end
redis.call('PUBLISH', ARGV[4],
           kind .. string.format('%.0f', now) .. '|' .. ARGV[1] .. '|' .. ARGV[6] .. '|' .. target)
return string.format('%.0f', w)
"""
)

# KEYS[1] value key
# ARGV[1] invalidation bus channel, ARGV[2] origin (the publishing GCache instance),
# ARGV[3] the message's signature ('': unsigned)
# Deletes the entry and publishes "d|<server now us>|0|<origin>|<key>" (signed: "D|...|<origin>|
# <signature>|<key>") so other processes drop their LOCAL copy. Returns the number of keys deleted.
DELETE = """
local n = redis.call('DEL', KEYS[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local kind, target = 'd|', KEYS[1]
if ARGV[3] ~= '' then kind, target = 'D|', ARGV[3] .. '|' .. KEYS[1] end
redis.call('PUBLISH', ARGV[1], kind .. string.format('%.0f', now) .. '|0|' .. ARGV[2] .. '|' .. target)
return n
"""

# ARGV[1] invalidation bus channel, ARGV[2] origin (the publishing GCache instance),
# ARGV[3] the message's signature ('': unsigned)
# Tells every process that this cache was flushed: "f|<server now us>|0|<origin>|" (signed:
# "F|...|<origin>|<signature>|"). Returns receivers.
ANNOUNCE_FLUSH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local kind, target = 'f|', ''
if ARGV[3] ~= '' then kind, target = 'F|', ARGV[3] .. '|' end
return redis.call('PUBLISH', ARGV[1], kind .. string.format('%.0f', now) .. '|0|' .. ARGV[2] .. '|' .. target)
"""


# With GCacheConfig(legacy_compat=True) a tracked entity keeps the original gcache's watermark: a
# string of milliseconds at the fence key, which the original's processes read with MGET. A
# process of ours without legacy_compat may have made it a fence (a hash of microseconds; see
# _FOREIGN_WATERMARK): these scripts read and raise that one instead, so the two kinds of process
# honour each other while a fleet switches the option.
_ORIGINAL_WATERMARK = """
local function _WATERMARK_MS(key)
  local ok, s = pcall(redis.call, 'GET', key)
  if ok then return s end
  local us = tonumber(redis.call('HMGET', key, 'w')[1])
  if us then return string.format('%.0f', math.ceil(us / 1000)) end
  return false
end
"""

# KEYS[1] value key, KEYS[2] watermark key
# ARGV[1] '1' to return the value's PTTL, '' not to; ARGV[2] (optional) the read limit, as
# READ_TRACKED's ARGV[4]
# Returns {value or nil, watermark (ms, as stored: the reader parses it) or nil, server time
# seconds, and microseconds, the value's PTTL (ms) or nil}.
READ_ORIGINAL = (
    _VALUE
    + _ORIGINAL_WATERMARK
    + """
local t = redis.call('TIME')
local v = _VALUE(KEYS[1], ARGV[2])
local w = _WATERMARK_MS(KEYS[2])
local pttl = nil
if v and ARGV[1] == '1' then pttl = redis.call('PTTL', KEYS[1]) end
return {v, w, t[1], t[2], pttl}
"""
)

# KEYS[1] value key, KEYS[2] watermark key
# ARGV[1] t0: server time (ms) of the read before this write, which the entry carries as its
# creation time; ARGV[2] entry TTL (ms); ARGV[3] the entry; ARGV[4] compute limit (ms)
# Stores the entry unless the entity was invalidated at or after t0 (a watermark that is not a
# number refuses every write: fail closed). Returns 1 stored; 0 invalidated; -2 too slow.
WRITE_ORIGINAL = (
    _ORIGINAL_WATERMARK
    + """
local t = redis.call('TIME')
local t0 = tonumber(ARGV[1])
if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - t0 > tonumber(ARGV[4]) then return -2 end
local raw = _WATERMARK_MS(KEYS[2])
if raw then
  local w = tonumber(raw)
  if not w or w >= t0 then return 0 end
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
return 1
"""
)

# KEYS[1] watermark key
# ARGV[1] future buffer (ms), ARGV[2] the watermark's life (ms): the original's, longer than any
# tracked entry's TTL; ARGV[3] invalidation bus channel, ARGV[4] the entity, ARGV[5] origin,
# ARGV[6] the message's signature ('': unsigned)
# Raises the watermark (never lowers it) to server-now + buffer, in milliseconds as the original
# writes it, or in a fence a process without legacy_compat made of it; publishes as INVALIDATE.
# Returns the watermark (us) now in force.
INVALIDATE_ORIGINAL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local w = math.floor(now / 1000) + tonumber(ARGV[1])
local ok, s = pcall(redis.call, 'GET', KEYS[1])
if ok then
  local current = tonumber(s)
  if current and current > w then w = current end
  redis.call('SET', KEYS[1], string.format('%.0f', w), 'PX', ARGV[2])
else
  local current = tonumber(redis.call('HMGET', KEYS[1], 'w')[1]) or 0
  if current > w * 1000 then w = math.ceil(current / 1000) end
  redis.call('HSET', KEYS[1], 'w', string.format('%.0f', w * 1000))
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
end
local kind, target = 'i|', ARGV[4]
if ARGV[6] ~= '' then kind, target = 'I|', ARGV[6] .. '|' .. ARGV[4] end
redis.call('PUBLISH', ARGV[3],
           kind .. string.format('%.0f', now) .. '|' .. ARGV[1] .. '|' .. ARGV[5] .. '|' .. target)
return string.format('%.0f', w * 1000)
"""
