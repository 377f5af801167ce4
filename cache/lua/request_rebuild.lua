-- Note a request to rebuild a bucket; tell the caller whether to enqueue a task.
-- KEYS[1] - the bucket's rebuild state hash (req: requests so far, queued: the lease
--           deadline (ms) of the task waiting, done: request count covered by the last
--           finished run, running: the lease deadline of the run in progress)
-- ARGV[1] - seconds to keep the state of a bucket nobody asks about
-- ARGV[2] - lease of a task enqueued now, in ms
-- ARGV[3] - the caller's clock, ms since the epoch
-- returns {1, deadline} when the caller must enqueue a rebuild (it holds the lease until
-- deadline), {0, deadline} when a task whose lease runs until deadline is queued
local ttl = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local now = tonumber(ARGV[3])

redis.call('HINCRBY', KEYS[1], 'req', 1)
redis.call('EXPIRE', KEYS[1], ttl)
-- A lease, not a flag: a task lost with the worker that held it (reserved, or waiting
-- for its ETA) stops coalescing requests once its deadline passes.
local queued = tonumber(redis.call('HGET', KEYS[1], 'queued') or '0') or 0
if queued > now then
  return {0, queued}
end
local deadline = now + lease
redis.call('HSET', KEYS[1], 'queued', deadline)
return {1, deadline}
