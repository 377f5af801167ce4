-- Forget one account, unless the stored payload is newer than the deletion.
-- KEYS[1] - account payload hash
-- KEYS[2] - account revision hash
-- KEYS[3] - account digest hash
-- KEYS[4] - last-used hash
-- ARGV[1] - account id
-- ARGV[2] - revision of the deletion, or '' to delete whatever is stored
-- returns 1 when the account was deleted, 0 when it was absent or newer
local id = ARGV[1]
local revision = tonumber(ARGV[2])

local stored = redis.call('HGET', KEYS[2], id)
if revision and stored and tonumber(stored) > revision then
  return 0
end
redis.call('HDEL', KEYS[4], id)
redis.call('HDEL', KEYS[3], id)
redis.call('HDEL', KEYS[2], id)
return redis.call('HDEL', KEYS[1], id)
