-- Correct one entry of an account's bucket index, if nobody changed it meanwhile: a
-- writer that indexed a newer version since then must keep its entry.
-- KEYS[1] - the account's bucket index (bucket -> version that lists it)
-- ARGV[1] - the bucket's name
-- ARGV[2] - the version the caller found there
-- ARGV[3] - the version that lists the account now, or 0 when none does
-- returns 1 when the entry was corrected, 0 when it had changed
local bucket = ARGV[1]
local seen = ARGV[2]
local now = ARGV[3]

if redis.call('HGET', KEYS[1], bucket) ~= seen then
  return 0
end
if now == '0' then
  redis.call('HDEL', KEYS[1], bucket)
else
  redis.call('HSET', KEYS[1], bucket, now)
end
return 1
