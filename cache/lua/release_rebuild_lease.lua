-- Forget a settled bucket's lease, unless a request renewed it meanwhile.
-- KEYS[1] - the lease sorted set (bucket -> lease deadline, ms)
-- ARGV[1] - the bucket
-- ARGV[2] - the deadline seen expired: a later one was written by a newer request
-- returns 1 when forgotten
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
