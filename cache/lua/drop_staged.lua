-- Unlink version N of a bucket, staged by a writer that did not activate it, unless N
-- is the active version. After Redis lost its state the version counter starts again,
-- so another writer may hold the same number and have activated it: the keys are then
-- that writer's, and readers are served from them.
-- KEYS[1] - the bucket's meta hash
-- KEYS[2], KEYS[3], KEYS[4] - version N's id list, payload hash and entry hash
-- ARGV[1] - version N
-- returns 1 when the keys were unlinked, 0 when N is active (nothing touched)
local version = tonumber(ARGV[1])

if active_version(KEYS[1]) == version then
  return 0
end
redis.call('UNLINK', KEYS[2], KEYS[3], KEYS[4])
return 1
