-- After an activation: keep the shared account store as new as the snapshot just
-- activated, and name the accounts the store holds newer (or deleted) revisions of.
-- (Those reached the version already, through the bucket index: see index_accounts.lua.)
-- KEYS[1] - account payload hash (id -> JSON)
-- KEYS[2] - account revision hash (id -> revision; x.5 is a deletion at x)
-- KEYS[3] - account digest hash (id -> digest of the payload)
-- ARGV[1] - account ids, joined by ','
-- ARGV[2] - their revisions (-1 for none), joined by ','
-- ARGV[3] - digests of their payloads, joined by ','
-- ARGV[4..] - their payloads, one argument each
-- returns the ids whose stored revision is newer than the one given
local first_payload = 4
local count = #ARGV - first_payload + 1

if count == 0 then
  return {}
end
local ids = split(ARGV[1], count, 'store_accounts')
local revisions = split(ARGV[2], count, 'store_accounts')
local digests = split(ARGV[3], count, 'store_accounts')

local stored_revisions = redis.call('HMGET', KEYS[2], unpack(ids))
local stored_digests = redis.call('HMGET', KEYS[3], unpack(ids))
local payload_pairs, revision_pairs, digest_pairs, newer = {}, {}, {}, {}
for k = 1, count do
  local stored = tonumber(stored_revisions[k] or '')
  if stored and tonumber(revisions[k]) < stored then
    newer[#newer + 1] = ids[k]
  elseif digests[k] ~= stored_digests[k] or not stored then
    revision_pairs[#revision_pairs + 1] = ids[k]
    revision_pairs[#revision_pairs + 1] = revisions[k]
    payload_pairs[#payload_pairs + 1] = ids[k]
    payload_pairs[#payload_pairs + 1] = ARGV[first_payload + k - 1]
    digest_pairs[#digest_pairs + 1] = ids[k]
    digest_pairs[#digest_pairs + 1] = digests[k]
  elseif tonumber(revisions[k]) > stored then
    revision_pairs[#revision_pairs + 1] = ids[k]
    revision_pairs[#revision_pairs + 1] = revisions[k]
  end
end
if #revision_pairs > 0 then
  redis.call('HSET', KEYS[2], unpack(revision_pairs))
end
if #payload_pairs > 0 then
  redis.call('HSET', KEYS[1], unpack(payload_pairs))
  redis.call('HSET', KEYS[3], unpack(digest_pairs))
end
return newer
