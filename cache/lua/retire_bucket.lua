-- Retire a bucket: readers miss from now on, its registry entry goes, and its last
-- snapshot expires after the grace period like any replaced one. The version counter
-- stays, so a later rebuild of the same bucket can only move versions forward.
-- KEYS[1] - the bucket's meta hash
-- KEYS[2] - bucket registry set
-- KEYS[3] - the bucket's rebuild request state
-- ARGV[1] - stem of the bucket's snapshot lists (carries KEYS[1]'s hash tag)
-- ARGV[2] - the bucket's name
-- ARGV[3] - seconds the last snapshot stays readable
-- returns 1 when the bucket was registered or active, 0 otherwise
local stem = ARGV[1]
local bucket = ARGV[2]
local grace = tonumber(ARGV[3])

local active = redis.call('HGET', KEYS[1], 'active')
if active then
  redis.call('EXPIRE', stem .. active, grace)
  -- Keep the version number so that activation stays monotonic after a retirement.
  redis.call('HSET', KEYS[1], 'retired', active)
  redis.call('HDEL', KEYS[1], 'active', 'count', 'built_at', 'rebuild_ms')
end
redis.call('DEL', KEYS[3])
local removed = redis.call('SREM', KEYS[2], bucket)
if active or removed == 1 then
  return 1
end
return 0
