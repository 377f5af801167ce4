-- Retire a bucket: readers miss from now on and its last snapshot expires after the
-- grace period like any replaced one. The version counter stays, so a later rebuild of
-- the same bucket can only move versions forward. (The registry entry is removed by the
-- caller: the registry lives in another Cluster slot.)
-- KEYS[1] - the bucket's meta hash
-- KEYS[2] - the bucket's rebuild request state
-- ARGV[1], ARGV[2], ARGV[3] - stems of the id lists, payload and entry hashes (they
--   carry KEYS[1]'s hash tag, so they live in KEYS[1]'s slot)
-- ARGV[4] - seconds the last snapshot stays readable
-- ARGV[5] - channel told '<bucket> 0 <gen>' so near caches drop the bucket
-- ARGV[6] - the bucket's name
-- returns 1 when the bucket was active, 0 otherwise
local grace = tonumber(ARGV[4])

redis.call('DEL', KEYS[2])
local active = redis.call('HGET', KEYS[1], 'active')
if not active then
  return 0
end
for i = 1, 3 do
  redis.call('EXPIRE', ARGV[i] .. active, grace)
end
-- Keep the version number so that activation stays monotonic after a retirement.
redis.call('HSET', KEYS[1], 'retired', active)
redis.call('HDEL', KEYS[1], 'active', 'count', 'built_at', 'rebuild_ms')
local gen = redis.call('HINCRBY', KEYS[1], 'gen', 1)
redis.call('PUBLISH', ARGV[5], ARGV[6] .. ' 0 ' .. gen)
return 1
