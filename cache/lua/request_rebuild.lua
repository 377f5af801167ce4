-- Note a request to rebuild a bucket; tell the caller whether to enqueue a task.
-- KEYS[1] - the bucket's rebuild state hash (req: requests so far, queued: a task is
--           waiting, done: request count covered by the last finished run)
-- ARGV[1] - seconds to keep the state of a bucket nobody asks about
-- returns 1 when the caller must enqueue a rebuild, 0 when one is already queued
local ttl = tonumber(ARGV[1])

redis.call('HINCRBY', KEYS[1], 'req', 1)
redis.call('EXPIRE', KEYS[1], ttl)
return redis.call('HSETNX', KEYS[1], 'queued', 1)
