-- Drop a bucket's entry from the index of accounts that version N of the bucket, just
-- activated, no longer lists (the version it replaced did); an entry naming a newer
-- version than N was written by a newer writer, which lists the account: it stays. So
-- does one naming N itself: N's writer did not list the account, so the entry is an
-- account put into N in place since its activation (cache/placements.py).
-- KEYS[1] - an account's bucket index (bucket -> version that lists it)
-- KEYS[2..n] - the same of each further account
-- ARGV[1] - the bucket's name
-- ARGV[2] - version N
-- returns how many entries were dropped
local bucket = ARGV[1]
local version = tonumber(ARGV[2])

local dropped = 0
for k = 1, #KEYS do
  local indexed = tonumber(redis.call('HGET', KEYS[k], bucket) or '')
  if indexed and indexed < version then
    dropped = dropped + redis.call('HDEL', KEYS[k], bucket)
  end
end
return dropped
