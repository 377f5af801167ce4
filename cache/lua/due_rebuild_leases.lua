-- The buckets whose rebuild lease has expired, oldest first.
-- KEYS[1] - the lease sorted set (bucket -> lease deadline, ms)
-- ARGV[1] - at most this many
-- returns {bucket, deadline, bucket, deadline, ...}
local limit = tonumber(ARGV[1])

local now = now_ms()
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
