-- Forget one account, leaving a tombstone so that a rebuild which read the account
-- before it was deleted cannot write it back.
-- KEYS[1] - account payload hash
-- KEYS[2] - account revision hash; a tombstone is the deleted revision + 0.5, which
--           only a later revision (an undelete in the source) passes
-- KEYS[3] - account digest hash
-- KEYS[4] - last-used hash
-- KEYS[5] - the account's bucket index (bucket -> version that lists it); kept, so an
--           undelete reaches the versions that list the account as deleted
-- ARGV[1] - account id
-- ARGV[2] - revision of the deletion, or '' for "whatever revision is cached"
-- returns {deleted 1 or 0, tombstone or false, index as a flat list bucket, version,
--         ...}; {0, false, {}} when the cached revision is newer
local id = ARGV[1]
local revision = tonumber(ARGV[2])

local stored = tonumber(redis.call('HGET', KEYS[2], id) or '')
if revision and stored and stored > revision then
  return {0, false, {}}
end
local deleted = revision or stored
local tombstone = false
if deleted then
  tombstone = tostring(math.floor(deleted) + 0.5)
  redis.call('HSET', KEYS[2], id, tombstone)
end
redis.call('HDEL', KEYS[4], id)
redis.call('HDEL', KEYS[3], id)
return {redis.call('HDEL', KEYS[1], id), tombstone, redis.call('HGETALL', KEYS[5])}
