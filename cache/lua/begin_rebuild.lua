-- Start a rebuild (the caller holds the bucket's lock): let new requests queue another
-- task, and say whether this run has anything to do.
-- KEYS[1] - the bucket's rebuild state hash
-- ARGV[1] - '1' to rebuild even when no request arrived since the last finished run
-- ARGV[2] - seconds to keep the state
-- ARGV[3] - lease of this run, in ms: requests it covers are sent again once it has
--           passed without the run finishing (the worker running it was killed)
-- ARGV[4] - the caller's clock, ms since the epoch
-- returns the request count this run covers, or -1 when every request up to now was
-- already covered by a finished run (the rebuild can be skipped)
local force = ARGV[1] == '1'
local ttl = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local now = tonumber(ARGV[4])

local requested = tonumber(redis.call('HGET', KEYS[1], 'req') or '0')
local done = tonumber(redis.call('HGET', KEYS[1], 'done') or '-1')
-- Cleared before reading the source: a request from now on may carry a change this run
-- does not see, so it must queue a run of its own.
redis.call('HDEL', KEYS[1], 'queued')
if not force and requested <= done then
  return -1
end
redis.call('HSET', KEYS[1], 'running', now + lease)
redis.call('EXPIRE', KEYS[1], ttl)
return requested
