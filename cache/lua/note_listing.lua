-- Note in an account's bucket index that version N of a bucket lists it (it was put
-- there in place), unless the index names a newer version already: a writer staged
-- one and indexed it, and changes must keep reaching that one.
-- KEYS[1] - the account's bucket index (bucket -> version that lists it)
-- ARGV[1] - the bucket's name
-- ARGV[2] - version N
-- returns 1 when noted, 0 when a newer version was named
local bucket = ARGV[1]
local version = tonumber(ARGV[2])

local named = tonumber(redis.call('HGET', KEYS[1], bucket) or '0')
if named > version then
  return 0
end
redis.call('HSET', KEYS[1], bucket, version)
return 1
