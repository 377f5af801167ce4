-- Note that version N of a bucket lists these accounts, before N is activated, and name
-- the accounts the shared store holds newer (or deleted) revisions of than N staged.
-- From this call on, set_account and delete_account reach N through the index; a
-- change stored before it is in the returned ids, which the writer puts into N.
-- KEYS[1] - account revision hash (id -> revision; x.5 is a deletion at x)
-- KEYS[2..n+1] - each account's bucket index (bucket -> version that lists it)
-- ARGV[1] - the bucket's name
-- ARGV[2] - version N
-- ARGV[3] - the account ids, joined by ',' (in the order of KEYS[2..])
-- ARGV[4] - the revisions N holds, joined by ','
-- returns the ids whose stored revision is newer than the one N holds
local bucket = ARGV[1]
local version = ARGV[2]
local count = #KEYS - 1
if count == 0 then
  return {}
end
local ids = split(ARGV[3], count, 'index_accounts')
local revisions = split(ARGV[4], count, 'index_accounts')

local stored = redis.call('HMGET', KEYS[1], unpack(ids))
local newer = {}
for k = 1, count do
  redis.call('HSET', KEYS[k + 1], bucket, version)
  local revision = tonumber(stored[k] or '')
  if revision and revision > tonumber(revisions[k]) then
    newer[#newer + 1] = ids[k]
  end
end
return newer
