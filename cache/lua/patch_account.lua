-- Put a changed account (or its deletion) into one version of a bucket's snapshot,
-- where that version lists it and holds no newer revision; tell near caches when the
-- version is the active one. The version may be staged (not active yet): its writer
-- activates it with the change in.
-- KEYS[1] - the bucket's meta hash
-- KEYS[2] - version N's payload hash
-- KEYS[3] - version N's entry hash
-- KEYS[4] - the bucket's version counter
-- ARGV[1] - version N
-- ARGV[2] - account id
-- ARGV[3] - its revision (-1 for none; x.5 for a deletion at x; '' deletes whatever
--           revision N holds)
-- ARGV[4] - digest of the payload, '-' for a deletion
-- ARGV[5] - the payload ('' for a deletion)
-- ARGV[6] - channel told '<bucket> <version> <gen> <account id>' after a change to the
--           active version
-- ARGV[7] - the bucket's name
-- returns {status, active version or 0, last reserved version}; status NOT_LISTED 0
--         when N does not list the account (or is gone), UNCHANGED 1 when N holds this
--         revision or a newer one, STAGED 2 when N changed but is not active, PUSHED 3
--         when the active N changed. A reserved version above the active one is a
--         writer that may have read the source before this change.
local version = tonumber(ARGV[1])
local id = ARGV[2]
local revision = tonumber(ARGV[3])
local digest = ARGV[4]
local payload = ARGV[5]

local active = active_version(KEYS[1])
local reserved = reserved_version(KEYS[4])
local entry = redis.call('HGET', KEYS[3], id)
if not entry then
  return {0, active, reserved}
end
local stored_digest, stored = string.match(entry, '^([^/]*)/(.*)$')
stored = tonumber(stored)
local written = ARGV[3]
if not revision then
  revision = math.floor(stored) + 0.5
  written = tostring(revision)
end
if revision < stored or (revision == stored and digest == stored_digest) then
  return {1, active, reserved}
end
redis.call('HSET', KEYS[3], id, digest .. '/' .. written)
if digest == '-' then
  redis.call('HDEL', KEYS[2], id)
else
  redis.call('HSET', KEYS[2], id, payload)
end
if version ~= active then
  return {2, active, reserved}
end
-- count is the active version's live accounts: a removal or deletion takes one off,
-- a payload over a removed entry puts one back.
if (stored_digest == '-') ~= (digest == '-') then
  redis.call('HINCRBY', KEYS[1], 'count', digest == '-' and -1 or 1)
end
announce(KEYS[1], ARGV[6], ARGV[7], version, id)
return {3, active, reserved}
