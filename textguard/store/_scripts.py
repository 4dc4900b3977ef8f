"""The Lua scripts every write and lookup runs (redis-py's `LUA_*` constants are the model):
one script call per shard tag, so each is atomic on one Redis and on a cluster alike."""

from __future__ import annotations

from textguard.store._format import SHARDS

__all__ = ["ADD_POSTINGS", "BEGIN", "CLAIM", "COMMIT", "LOOKUP", "REMOVE_POSTINGS", "WITHDRAW"]

# KEYS: bucket key per entry, then the shard's filter key if ARGV[4] is given. ARGV: fields
# blob, postings blob, cap, filter bit positions (4 bytes each). Sets the bits; appends each
# posting to its field unless present or the field already holds `cap` postings. Returns
# entries added.
ADD_POSTINGS = """
local fields, postings, cap, bits = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local entries = #KEYS
if bits then
  entries = entries - 1
  for j = 1, #bits, 4 do redis.call('SETBIT', KEYS[#KEYS], struct.unpack('>I4', bits, j), 1) end
end
local added = 0
for i = 1, entries do
  local key = KEYS[i]
  local field = string.sub(fields, (i - 1) * 5 + 1, i * 5)
  local posting = string.sub(postings, (i - 1) * 8 + 1, i * 8)
  if redis.call('HSETNX', key, field, posting) == 1 then
    added = added + 1
  else
    local current = redis.call('HGET', key, field)
    if #current < cap * 8 then
      local seen = false
      for j = 1, #current, 8 do
        if string.sub(current, j, j + 7) == posting then seen = true break end
      end
      if not seen then
        redis.call('HSET', key, field, current .. posting)
        added = added + 1
      end
    end
  end
end
return added
"""

# KEYS: bucket key per entry. ARGV: fields blob, 4-byte document number. Drops that document's
# postings; removes fields left empty. Returns entries removed.
REMOVE_POSTINGS = """
local fields, number = ARGV[1], ARGV[2]
local removed = 0
for i, key in ipairs(KEYS) do
  local field = string.sub(fields, (i - 1) * 5 + 1, i * 5)
  local current = redis.call('HGET', key, field)
  if current then
    local kept = {}
    for j = 1, #current, 8 do
      local posting = string.sub(current, j, j + 7)
      if string.sub(posting, 1, 4) == number then removed = removed + 1 else kept[#kept + 1] = posting end
    end
    if #kept == 0 then redis.call('HDEL', key, field) else redis.call('HSET', key, field, table.concat(kept)) end
  end
end
return removed
"""

# KEYS: bucket key per lookup (a cluster), or none. ARGV: key prefix, buckets (4 bytes each),
# fields blob, and on one Redis the nonce and stats keys. One reply per lookup (nil when
# absent), then on one Redis the index's nonce and generation. There the key names are built
# here rather than sent (a check looks up hundreds); a cluster needs them named, so that the
# call is routed to their slot and refused (not answered wrongly) while that slot migrates, and
# its nonce lives on another node.
LOOKUP = """
local prefix, buckets, fields = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 1, #buckets / 4 do
  local key = KEYS[i]
  if not key then
    local bucket = struct.unpack('>I4', buckets, (i - 1) * 4 + 1)
    key = prefix .. '{s' .. (bucket % %(shards)d) .. '}:b' .. bucket
  end
  out[i] = redis.call('HGET', key, string.sub(fields, (i - 1) * 5 + 1, i * 5)) or false
end
if ARGV[4] then
  out[#out + 1] = redis.call('GET', ARGV[4]) or false
  out[#out + 1] = redis.call('HGET', ARGV[5], 'generation') or false
end
return out
""".replace("%(shards)d", str(SHARDS))

# KEYS: docs, live, pending, stats, versions. ARGV: id, number, chars, entries, writer, public domain
# ("1" or "0": counted apart, for stats). Makes `number` the
# live version of `id`; the version it replaces is queued in pending for purging. Returns it or
# nil; -1 if this writer no longer holds the lease on `number` (another writer is purging it).
COMMIT = """
local docs, live, pending, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, number = ARGV[1], ARGV[2]
local lease = redis.call('HGET', pending, number)
if not lease then return -1 end
local record = cjson.decode(lease)
if record.writer ~= ARGV[5] or record.purging then return -1 end
local version = redis.call('HGET', KEYS[5], id)
if version then
  local newest = cjson.decode(version)
  if newest.number == number then
    newest.committed = true
    redis.call('HSET', KEYS[5], id, cjson.encode(newest))
  end
end
local old = redis.call('HGET', docs, id)
redis.call('HSET', docs, id, number)
redis.call('HSET', live, number, id)
redis.call('HDEL', pending, number)
redis.call('HINCRBY', stats, 'characters', ARGV[3])
redis.call('HINCRBY', stats, 'entries', ARGV[4])
redis.call('HINCRBY', stats, 'generation', 1)
if ARGV[6] == '1' then redis.call('HINCRBY', stats, 'public_domain', 1) end
if old and old ~= number then
  redis.call('HDEL', live, old)
  redis.call('HSET', pending, old, cjson.encode({id = id, lease = 0, committed = true}))
  return old
end
return false
"""

# KEYS: docs, live, pending, versions. ARGV: id. Takes `id` out of service at once; returns its number.
WITHDRAW = """
local number = redis.call('HGET', KEYS[1], ARGV[1])
if not number then return false end
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], number)
redis.call('HSET', KEYS[3], number, cjson.encode({id = ARGV[1], lease = 0, committed = true}))
return number
"""

# KEYS: pending, versions. ARGV: number, now, new lease, writer. Takes over a pending record whose
# lease is over, so that exactly one writer purges it (and its first writer can no longer commit).
CLAIM = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return false end
local record = cjson.decode(raw)
if tonumber(record.lease) > tonumber(ARGV[2]) then return false end
record.lease = tonumber(ARGV[3])
record.writer = ARGV[4]
record.purging = true
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
local version = redis.call('HGET', KEYS[2], record.id)
if version and cjson.decode(version).number == ARGV[1] then redis.call('HDEL', KEYS[2], record.id) end
return raw
"""

# KEYS: pending, versions. ARGV: now, lease, writer, then (id, number, digest) per document. Leases
# `number` to this writer for a new version of `id` (1), unless that version (same digest) is
# already committed (2) or another writer holds a live lease on it (0: it is left to that one).
BEGIN = """
local pending, versions = KEYS[1], KEYS[2]
local now, lease, writer = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local out = {}
for i = 4, #ARGV, 3 do
  local id, number, digest = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local current = redis.call('HGET', versions, id)
  local state = 1
  if current then
    local newest = cjson.decode(current)
    if newest.digest == digest then
      if newest.committed then state = 2
      elseif newest.writer ~= writer and tonumber(newest.lease) > now then state = 0 end
    end
  end
  if state == 1 then
    redis.call('HSET', versions, id, cjson.encode({number = number, digest = digest, lease = lease, writer = writer}))
    redis.call('HSET', pending, number, cjson.encode({id = id, lease = lease, writer = writer}))
  end
  out[#out + 1] = state
end
return out
"""
