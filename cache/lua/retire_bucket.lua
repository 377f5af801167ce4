-- Retire a bucket: readers miss from now on and its last snapshot expires after the
-- grace period like any replaced one. The version number stays, so a later rebuild of
-- the same bucket can only move versions forward. (The registry entry and the rebuild
-- requests are other stores' keys, in other slots: their owners drop them.)
-- KEYS[1] - the bucket's meta hash
-- KEYS[2], KEYS[3], KEYS[4] - id list, payload and entry hash of the version the
--   caller expects to be active
-- ARGV[1] - that version (0 for none)
-- ARGV[2] - seconds the last snapshot stays readable
-- ARGV[3] - channel told '<bucket> 0 <gen>' so near caches drop the bucket
-- ARGV[4] - the bucket's name
-- returns {RETIRED 1, version} when the bucket was active; {IDLE 0, 0} when it was
--         not; {MOVED 2, active version} when another version is active (call again)
local expected = tonumber(ARGV[1])
local grace = tonumber(ARGV[2])

local active = active_version(KEYS[1])
if active == 0 then
  return {0, 0}
end
if active ~= expected then
  return {2, active}
end
for i = 2, 4 do
  redis.call('EXPIRE', KEYS[i], grace)
end
-- Keep the version number so that activation stays monotonic after a retirement.
redis.call('HSET', KEYS[1], 'retired', active)
redis.call('HDEL', KEYS[1], 'active', 'count', 'built_at', 'rebuild_ms')
announce(KEYS[1], ARGV[3], ARGV[4], 0)
return {1, active}
