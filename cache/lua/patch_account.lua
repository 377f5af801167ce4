-- Put a changed account (or its deletion) into a bucket's active version, where the
-- version lists it and holds no newer revision, and tell near caches.
-- KEYS[1] - the bucket's meta hash
-- ARGV[1], ARGV[2] - stems of the payload and entry hashes; version N is stem .. N.
--   They carry KEYS[1]'s hash tag, so they live in KEYS[1]'s slot.
-- ARGV[3] - account id
-- ARGV[4] - its revision (-1 for none; x.5 for a deletion at x; '' deletes whatever
--           revision is there)
-- ARGV[5] - digest of the payload, '-' for a deletion
-- ARGV[6] - the payload ('' for a deletion)
-- ARGV[7] - channel told '<bucket> <version> <gen>' after a change
-- ARGV[8] - the bucket's name
-- returns 1 when the active version changed, 0 otherwise
local id = ARGV[3]
local revision = tonumber(ARGV[4])
local digest = ARGV[5]
local payload = ARGV[6]

local active = redis.call('HGET', KEYS[1], 'active')
if not active then
  return 0
end
local entries = ARGV[2] .. active
local entry = redis.call('HGET', entries, id)
if not entry then
  return 0 -- not in this bucket
end
local stored_digest, stored = string.match(entry, '^([^/]*)/(.*)$')
stored = tonumber(stored)
if not revision then
  revision = math.floor(stored) + 0.5
end
if revision < stored or (revision == stored and digest == stored_digest) then
  return 0
end
redis.call('HSET', entries, id, digest .. '/' .. revision)
if digest == '-' then
  redis.call('HDEL', ARGV[1] .. active, id)
else
  redis.call('HSET', ARGV[1] .. active, id, payload)
end
local gen = redis.call('HINCRBY', KEYS[1], 'gen', 1)
redis.call('PUBLISH', ARGV[7], ARGV[8] .. ' ' .. active .. ' ' .. gen)
return 1
