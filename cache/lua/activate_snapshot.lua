-- Activate staged version N of a bucket's snapshot if, and only if, it is newer than
-- the active one: a compare-and-set of constant cost whatever the bucket's size. N was
-- reserved (INCR on KEYS[2]) before the source was read, so the newest read wins.
-- KEYS[1] - the bucket's meta hash
-- KEYS[2] - the bucket's version counter
-- KEYS[3], KEYS[4], KEYS[5] - version N's id list, payload hash and entry hash
-- KEYS[6], KEYS[7], KEYS[8] - the same of the version the caller expects to replace
-- ARGV[1] - version N
-- ARGV[2] - how many ids N holds (what the writer staged)
-- ARGV[3] - the version the caller expects to be active (0 for none)
-- ARGV[4] - seconds a replaced version stays readable
-- ARGV[5] - built_at, integer ms
-- ARGV[6] - rebuild duration in ms, or '' when unknown
-- ARGV[7] - channel told '<bucket> <version> <gen>' on activation
-- ARGV[8] - the bucket's name
-- returns {ACTIVATED 1, previous active version or 0} when N became active;
--         {STALE 0, floor} when the active (or retired) version is N or newer;
--         {UNRESERVED -1, last reserved version} when N was never reserved;
--         {INCOMPLETE -2, ids staged} when the staged version is incomplete (expired);
--         {MOVED 2, active version} when the active version is not the one expected
--         (call again naming it)
local version = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local expected = tonumber(ARGV[3])
local grace = tonumber(ARGV[4])
local built_at = ARGV[5]
local duration = ARGV[6]

local reserved = reserved_version(KEYS[2])
if version > reserved then
  return {-1, reserved}
end
local floor, active = version_floor(KEYS[1])
if version <= floor then
  return {0, floor}
end
if active ~= expected then
  return {2, active}
end
local staged = redis.call('LLEN', KEYS[3])
if staged ~= count then
  return {-2, staged}
end

for i = 3, 5 do
  redis.call('PERSIST', KEYS[i])
end
redis.call('HSET', KEYS[1], 'active', version, 'count', count, 'built_at', built_at)
if duration ~= '' then
  redis.call('HSET', KEYS[1], 'rebuild_ms', duration)
else
  redis.call('HDEL', KEYS[1], 'rebuild_ms')
end
-- Expire rather than delete: a reader that saw the old version may still be reading it.
if active > 0 then
  for i = 6, 8 do
    redis.call('EXPIRE', KEYS[i], grace)
  end
end
announce(KEYS[1], ARGV[7], ARGV[8], version)
return {1, active}
