-- Activate version N of a bucket's snapshot if, and only if, it is newer than the
-- active one. N was reserved (INCR on KEYS[2]) before the source was read, so the
-- newest read wins. A loser writes nothing at all.
-- KEYS[1] - the bucket's meta hash
-- KEYS[2] - the bucket's version counter
-- KEYS[3] - account payload hash (id -> JSON)
-- KEYS[4] - account revision hash (id -> revision)
-- KEYS[5] - last-used hash (id -> integer ms)
-- KEYS[6] - bucket registry set
-- ARGV[1] - version N
-- ARGV[2] - stem of the bucket's snapshot lists (carries KEYS[1]'s hash tag)
-- ARGV[3] - the bucket's name, for the registry
-- ARGV[4] - seconds a replaced snapshot stays readable
-- ARGV[5] - built_at, integer ms
-- ARGV[6] - rebuild duration in ms, or '' when unknown
-- ARGV[7..] - four values per account: id, revision (-1 for none), payload, last use
--             in ms ('' for none)
-- returns {1, previous active version or 0} when N became active;
--         {0, active version} when the active version is N or newer;
--         {-1, last reserved version} when N was never reserved
local version = tonumber(ARGV[1])
local stem = ARGV[2]
local bucket = ARGV[3]
local grace = tonumber(ARGV[4])
local built_at = ARGV[5]
local duration = ARGV[6]
local first_account = 7

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

local ids = {}
for i = first_account, #ARGV, 4 do
  local id, revision, payload, used = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3]
  ids[#ids + 1] = id
  -- A payload never replaces a newer one: the account may have changed since we read it.
  local stored = redis.call('HGET', KEYS[4], id)
  if not stored or revision >= tonumber(stored) then
    redis.call('HSET', KEYS[3], id, payload)
    redis.call('HSET', KEYS[4], id, revision)
  end
  if used ~= '' then
    local seen = redis.call('HGET', KEYS[5], id)
    if not seen or tonumber(used) > tonumber(seen) then
      redis.call('HSET', KEYS[5], id, used)
    end
  end
end

local snapshot = stem .. version
local chunk = 4000
for first = 1, #ids, chunk do
  redis.call('RPUSH', snapshot, unpack(ids, first, math.min(first + chunk - 1, #ids)))
end

redis.call('HSET', KEYS[1], 'active', version, 'count', #ids, 'built_at', built_at)
if duration ~= '' then
  redis.call('HSET', KEYS[1], 'rebuild_ms', duration)
else
  redis.call('HDEL', KEYS[1], 'rebuild_ms')
end
redis.call('SADD', KEYS[6], bucket)
-- Expire rather than delete: a reader that saw the old version number may still read it.
if active > 0 then
  redis.call('EXPIRE', stem .. active, grace)
end
return {1, active}
