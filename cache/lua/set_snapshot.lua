-- Activate version N of a bucket's snapshot if, and only if, it is newer than the
-- active one. N was reserved (INCR on KEYS[2]) before the source was read, so the
-- newest read wins. A loser writes nothing at all.
-- KEYS[1] - the bucket's meta hash
-- KEYS[2] - the bucket's version counter
-- KEYS[3] - account payload hash (id -> JSON)
-- KEYS[4] - account revision hash (id -> revision)
-- KEYS[5] - account digest hash (id -> digest of the payload)
-- KEYS[6] - last-used hash (id -> integer ms)
-- KEYS[7] - bucket registry set
-- ARGV[1] - version N
-- ARGV[2] - stem of the bucket's snapshot lists (carries KEYS[1]'s hash tag)
-- ARGV[3] - the bucket's name, for the registry
-- ARGV[4] - seconds a replaced snapshot stays readable
-- ARGV[5] - built_at, integer ms
-- ARGV[6] - rebuild duration in ms, or '' when unknown
-- ARGV[7] - account ids in snapshot order, joined by ','
-- ARGV[8] - their revisions (-1 for none), joined by ','
-- ARGV[9] - digests of their payloads, joined by ','
-- ARGV[10] - their last uses in ms ('' for none), joined by ','
-- ARGV[11..] - their payloads, one argument each, in the same order.
--   Small fields come joined because each script argument costs the server far more
--   than its bytes: 5000 accounts as five arguments each cost more than the writes.
-- returns {1, previous active version or 0} when N became active;
--         {0, active version} when the active version is N or newer;
--         {-1, last reserved version} when N was never reserved
local version = tonumber(ARGV[1])
local stem = ARGV[2]
local bucket = ARGV[3]
local grace = tonumber(ARGV[4])
local built_at = ARGV[5]
local duration = ARGV[6]
local first_payload = 11
-- unpack() is bounded by Lua's C stack (8000 slots): write in chunks.
local chunk = 2000

local reserved = tonumber(redis.call('GET', KEYS[2]) or '0')
if version > reserved then
  return {-1, reserved}
end
local active = tonumber(redis.call('HGET', KEYS[1], 'active') or '0')
-- A retired bucket remembers its last version: reviving it still moves forward.
local floor = math.max(active, tonumber(redis.call('HGET', KEYS[1], 'retired') or '0'))
if version <= floor then
  return {0, floor}
end

-- One account per payload argument; the joined fields must hold as many.
local count = #ARGV - first_payload + 1

local function split(joined)
  local parts = {}
  if count == 0 then
    return parts
  end
  -- '([^,]*),' on joined .. ',' keeps empty fields (an unknown last use).
  for part in string.gmatch(joined .. ',', '([^,]*),') do
    parts[#parts + 1] = part
  end
  if #parts ~= count then
    error('set_snapshot: ' .. count .. ' payloads but ' .. #parts .. ' values in a joined field')
  end
  return parts
end

local all_ids = split(ARGV[7])
local all_revisions = split(ARGV[8])
local all_digests = split(ARGV[9])
local all_uses = split(ARGV[10])

for first = 1, count, chunk do
  local last = math.min(first + chunk - 1, count)
  local ids = {unpack(all_ids, first, last)}
  local stored_revisions = redis.call('HMGET', KEYS[4], unpack(ids))
  local stored_digests = redis.call('HMGET', KEYS[5], unpack(ids))
  local seen_uses = redis.call('HMGET', KEYS[6], unpack(ids))
  local payload_pairs, revision_pairs, digest_pairs, use_pairs = {}, {}, {}, {}
  for k = 1, #ids do
    local n = first + k - 1
    local id, revision, digest, used = ids[k], all_revisions[n], all_digests[n], all_uses[n]
    -- A payload never replaces a newer one: the account may have changed since we read it.
    local stored = stored_revisions[k]
    if not stored or tonumber(revision) >= tonumber(stored) then
      revision_pairs[#revision_pairs + 1] = id
      revision_pairs[#revision_pairs + 1] = revision
      -- An unchanged payload is not rewritten, so readers keep their decoded copy.
      if digest ~= stored_digests[k] then
        payload_pairs[#payload_pairs + 1] = id
        payload_pairs[#payload_pairs + 1] = ARGV[first_payload + n - 1]
        digest_pairs[#digest_pairs + 1] = id
        digest_pairs[#digest_pairs + 1] = digest
      end
    end
    if used ~= '' and (not seen_uses[k] or tonumber(used) > tonumber(seen_uses[k])) then
      use_pairs[#use_pairs + 1] = id
      use_pairs[#use_pairs + 1] = used
    end
  end
  if #revision_pairs > 0 then
    redis.call('HSET', KEYS[4], unpack(revision_pairs))
  end
  if #payload_pairs > 0 then
    redis.call('HSET', KEYS[3], unpack(payload_pairs))
    redis.call('HSET', KEYS[5], unpack(digest_pairs))
  end
  if #use_pairs > 0 then
    redis.call('HSET', KEYS[6], unpack(use_pairs))
  end
  redis.call('RPUSH', stem .. version, unpack(ids))
end

redis.call('HSET', KEYS[1], 'active', version, 'count', count, 'built_at', built_at)
if duration ~= '' then
  redis.call('HSET', KEYS[1], 'rebuild_ms', duration)
else
  redis.call('HDEL', KEYS[1], 'rebuild_ms')
end
redis.call('SADD', KEYS[7], bucket)
-- Expire rather than delete: a reader that saw the old version number may still read it.
if active > 0 then
  redis.call('EXPIRE', stem .. active, grace)
end
return {1, active}
