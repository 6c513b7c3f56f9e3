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
    "READ_TRACKED",
    "READ_WITH_TTL",
    "UNLOCK",
    "WRITE_TRACKED",
]

# The tracked read. On a single server the read is first sent as these commands without the
# script (protocol.fence_read: a script costs the server 15 µs more than a GET); the script runs
# when that finds no fence, to create it with the read, and on a cluster.
# KEYS[1] value key, KEYS[2] fence (watermark) key
# ARGV[1] nonce for a fence this read has to create (8 bytes), ARGV[2] its life (ms): the compute
#         limit, which the write after a miss extends
# ARGV[3] '1' to return the value's PTTL (a fail-safe use case), '' not to
# ARGV[4] (optional) the read limit: at most this many bytes of the value and one more are read
#         (GETRANGE, which answers '' for none, read as none); absent: the whole value (GET)
# A missing fence is created here, so every read carries a nonce: if the fence is lost while the
# function runs (evicted, Redis restarted), the write sees another nonce, or none, and refuses.
# Returns {value or nil, fence nonce, watermark (us), server time seconds, and microseconds,
# the value's PTTL (ms) or nil}. The caller joins the two halves of the time: Lua arithmetic and
# string.format cost the server more than the reads themselves. The PTTL tells a fail-safe use
# case whether the value is past its TTL, in its grace period.
READ_TRACKED = """
local t = redis.call('TIME')
local v
if ARGV[4] then
  v = redis.call('GETRANGE', KEYS[1], 0, ARGV[4])
  if v == '' then v = false end
else
  v = redis.call('GET', KEYS[1])
end
local f = redis.call('HMGET', KEYS[2], 'n', 'w')
if not f[1] then
  redis.call('HSET', KEYS[2], 'n', ARGV[1], 'w', '0')
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  f = {ARGV[1], '0'}
end
local pttl = nil
if v and ARGV[3] == '1' then pttl = redis.call('PTTL', KEYS[1]) end
return {v, f[1], f[2], t[1], t[2], pttl}
"""

# KEYS[1] value key. An untracked read of a fail-safe use case: {value or nil, its PTTL (ms)}.
# ARGV[1] (optional) the read limit, as READ_TRACKED's ARGV[4] ('' for none, with GETRANGE)
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
# Returns 1 stored; 0 invalidated at or after t0; -1 fence replaced or gone since the read;
# -2 too slow.
WRITE_TRACKED = """
local t = redis.call('TIME')
local t0 = tonumber(ARGV[1])
if tonumber(t[1]) * 1000000 + tonumber(t[2]) - t0 > tonumber(ARGV[5]) then return -2 end
local f = redis.call('HMGET', KEYS[2], 'n', 'w')
if f[1] ~= ARGV[3] then return -1 end
local w = tonumber(f[2])
if not w or w >= t0 then return 0 end
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[4], 'PX', ttl)
if redis.call('PTTL', KEYS[2]) < ttl + 1000 then
  redis.call('PEXPIRE', KEYS[2], ttl + 1000)
end
return 1
"""

# KEYS[1] fence key
# ARGV[1] future buffer (ms), ARGV[2] nonce for a fence this call has to create (8 bytes),
# ARGV[3] minimum fence life (ms): the compute limit, so no write that read before this
#         invalidation can find the fence gone,
# ARGV[4] invalidation bus channel, ARGV[5] the entity ({...} part of the keys),
# ARGV[6] origin: the publishing GCache instance, which has applied the change already
# ARGV[7] the message's signature ('': unsigned; see gcache.bus)
# Publishes "i|<server now us>|<buffer ms>|<origin>|<entity>" (signed: "I|...|<origin>|<signature>|
# <entity>") in the same step, so the message and the watermark cannot disagree. Returns the
# watermark (us) now in force; it never goes down.
INVALIDATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local buffer = tonumber(ARGV[1])
local w = now + buffer * 1000
local f = redis.call('HMGET', KEYS[1], 'n', 'w')
if f[1] then
  local current = tonumber(f[2]) or 0
  if current > w then w = current end
  redis.call('HSET', KEYS[1], 'w', string.format('%.0f', w))
else
  redis.call('HSET', KEYS[1], 'n', ARGV[2], 'w', string.format('%.0f', w))
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
