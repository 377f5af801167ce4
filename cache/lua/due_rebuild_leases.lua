-- The buckets whose rebuild lease has expired, oldest first.
-- KEYS[1] - the lease sorted set (bucket -> lease deadline, ms)
-- ARGV[1] - at most this many
-- ARGV[2] - the caller's clock, ms since the epoch
-- returns {bucket, deadline, bucket, deadline, ...}
local limit = tonumber(ARGV[1])
local now = tonumber(ARGV[2])

return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
