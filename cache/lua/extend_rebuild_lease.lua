-- Extend the lease of a queued rebuild task that re-sends itself with a countdown: it
-- keeps coalescing requests while it waits, and only until it is due (plus the lease).
-- KEYS[1] - the bucket's rebuild state hash
-- ARGV[1] - seconds to keep the state
-- ARGV[2] - the new lease from now, in ms (the countdown plus the lease of a queued task)
-- ARGV[3] - the caller's clock, ms since the epoch
-- returns the lease deadline (ms)
local ttl = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local now = tonumber(ARGV[3])

local deadline = math.max(now + lease, tonumber(redis.call('HGET', KEYS[1], 'queued') or '0') or 0)
redis.call('HSET', KEYS[1], 'queued', deadline)
redis.call('EXPIRE', KEYS[1], ttl)
return deadline
