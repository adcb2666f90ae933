"""The Lua scripts: each runs atomically in Redis, on the keys of one hash slot."""

from __future__ import annotations

# KEYS: log, meta. ARGV: owner, turn token, first seq, count, kinds, ends, bodies, ttl ms, reset (0|1),
# ended (0|1), session id ('' if none), session seq, then field/value pairs for the meta hash.
# Returns {0, cancel flag} or {code}: -1 the stream is gone (Redis lost it), -2 fenced (not ours any more),
# -3 the batch does not start where the stream ends ({-3, next}), -4 another running turn holds the id.
APPEND = """
local log, meta = KEYS[1], KEYS[2]
local owner = redis.call('HGET', meta, 'owner')
local mine = owner == ARGV[1] and redis.call('HGET', meta, 'turn') == ARGV[2]
if ARGV[9] == '1' then
  if owner and not mine then
    if redis.call('HGET', meta, 'turn') == ARGV[2] then return {-2} end
    if redis.call('HGET', meta, 'ended') ~= '1' then return {-4} end
  end
  redis.call('DEL', log, meta)
  redis.call('HSET', meta, 'owner', ARGV[1], 'turn', ARGV[2], 'next', ARGV[3], 'base', ARGV[3], 'ended', '0')
elseif not owner then
  return {-1}
elseif not mine then
  return {-2}
end
local first, count = tonumber(ARGV[3]), tonumber(ARGV[4])
local nxt = tonumber(redis.call('HGET', meta, 'next'))
if first ~= nxt then return {-3, nxt} end
if ARGV[11] ~= '' then redis.call('HSET', meta, 'session', ARGV[11], 'session_seq', ARGV[12]) end
if count > 0 then
  local id = '0-' .. string.format('%d', first + count)
  if ARGV[11] ~= '' then
    redis.call('XADD', log, id, 'f', ARGV[3], 'k', ARGV[5], 'e', ARGV[6], 'b', ARGV[7],
      's', ARGV[11], 'ss', ARGV[12])
  else
    redis.call('XADD', log, id, 'f', ARGV[3], 'k', ARGV[5], 'e', ARGV[6], 'b', ARGV[7])
  end
  redis.call('HSET', meta, 'next', first + count)
end
for i = 13, #ARGV, 2 do redis.call('HSET', meta, ARGV[i], ARGV[i + 1]) end
if ARGV[10] == '1' then redis.call('HSET', meta, 'ended', '1') end
redis.call('PEXPIRE', log, ARGV[8])
redis.call('PEXPIRE', meta, ARGV[8])
return {0, redis.call('HGET', meta, 'cancel') or ''}
"""

# KEYS: log, meta. ARGV: the dead owner, the recovering process, first seq, count, kinds, ends, bodies,
# ttl ms, session, session seq. The closing events of a dead owner's turn: 1 appended, 0 not its any more.
TAKEOVER = """
local log, meta = KEYS[1], KEYS[2]
local m = redis.call('HMGET', meta, 'owner', 'ended', 'next')
if m[1] ~= ARGV[1] or m[2] == '1' then return 0 end
if tonumber(m[3]) ~= tonumber(ARGV[3]) then return -3 end
local id = '0-' .. string.format('%d', tonumber(ARGV[3]) + tonumber(ARGV[4]))
redis.call('XADD', log, id, 'f', ARGV[3], 'k', ARGV[5], 'e', ARGV[6], 'b', ARGV[7],
  's', ARGV[9], 'ss', ARGV[10])
redis.call('HSET', meta, 'owner', ARGV[2], 'ended', '1', 'next', tonumber(ARGV[3]) + tonumber(ARGV[4]))
redis.call('PEXPIRE', log, ARGV[8])
redis.call('PEXPIRE', meta, ARGV[8])
return 1
"""

# KEYS: meta. ARGV: the message to publish, the channel prefix. 0: no such turn, 1: it ended, 2: cancelling.
CANCEL = """
local m = redis.call('HMGET', KEYS[1], 'owner', 'ended')
if not m[1] then return 0 end
if m[2] == '1' then return 1 end
redis.call('HSET', KEYS[1], 'cancel', '1')
redis.call('PUBLISH', ARGV[2] .. m[1], ARGV[1])
return 2
"""

# KEYS: the registry, this process's turns. ARGV: process id, ttl ms, its running turns. Returns Redis's now.
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('DEL', KEYS[2])
for i = 3, #ARGV, 1000 do
  redis.call('SADD', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return now
"""

# KEYS: the registry. ARGV: silence ms. The processes that have not renewed for that long.
DEAD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now - tonumber(ARGV[1])))
"""

SCRIPTS = {"append": APPEND, "takeover": TAKEOVER, "cancel": CANCEL, "heartbeat": HEARTBEAT, "dead": DEAD}
