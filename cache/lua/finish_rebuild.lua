-- Record that a rebuild covering `requested` requests has been written.
-- KEYS[1] - the bucket's rebuild state hash
-- ARGV[1] - the request count the run covered (from begin_rebuild)
-- ARGV[2] - seconds to keep the state
-- returns the number of requests that arrived during the run
local covered = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])

local done = tonumber(redis.call('HGET', KEYS[1], 'done') or '-1')
if covered > done then
  redis.call('HSET', KEYS[1], 'done', covered)
end
redis.call('HDEL', KEYS[1], 'running')
redis.call('EXPIRE', KEYS[1], ttl)
local requested = tonumber(redis.call('HGET', KEYS[1], 'req') or '0')
return math.max(requested - covered, 0)
