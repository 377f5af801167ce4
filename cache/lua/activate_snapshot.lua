-- Activate staged version N of a bucket's snapshot if, and only if, it is newer than
-- the active one: a compare-and-set of constant cost whatever the bucket's size. N was
-- reserved (INCR on KEYS[2]) before the source was read, so the newest read wins.
-- KEYS[1] - the bucket's meta hash
-- KEYS[2] - the bucket's version counter
-- KEYS[3] - version N's id list
-- KEYS[4] - version N's payload hash
-- KEYS[5] - version N's entry hash
-- ARGV[1] - version N
-- ARGV[2] - how many ids N holds (what the writer staged)
-- ARGV[3], ARGV[4], ARGV[5] - stems of the id lists, payload and entry hashes; version
--   M is stem .. M. They carry KEYS[1]'s hash tag, so they live in KEYS[1]'s slot.
-- ARGV[6] - seconds a replaced version stays readable
-- ARGV[7] - built_at, integer ms
-- ARGV[8] - rebuild duration in ms, or '' when unknown
-- ARGV[9] - channel told '<bucket> <version> <gen>' on activation
-- ARGV[10] - the bucket's name
-- returns {1, previous active version or 0} when N became active;
--         {0, active version} when the active version is N or newer;
--         {-1, last reserved version} when N was never reserved;
--         {-2, ids staged} when the staged version is incomplete (it expired)
local version = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local stems = {ARGV[3], ARGV[4], ARGV[5]}
local grace = tonumber(ARGV[6])
local built_at = ARGV[7]
local duration = ARGV[8]
local channel = ARGV[9]
local bucket = ARGV[10]

local reserved = tonumber(redis.call('GET', KEYS[2]) or '0')
if version > reserved then
  return {-1, reserved}
end
local active = tonumber(redis.call('HGET', KEYS[1], 'active') or '0')
local floor = math.max(active, tonumber(redis.call('HGET', KEYS[1], 'retired') or '0'))
if version <= floor then
  return {0, floor}
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
  for _, stem in ipairs(stems) do
    redis.call('EXPIRE', stem .. active, grace)
  end
end
local gen = redis.call('HINCRBY', KEYS[1], 'gen', 1)
redis.call('PUBLISH', channel, bucket .. ' ' .. version .. ' ' .. gen)
return {1, active}
