-- Look again at a bucket whose rebuild lease expired: send its rebuild anew when
-- requests are outstanding and no live lease covers them (the task holding it was lost).
-- KEYS[1] - the bucket's rebuild state hash
-- ARGV[1] - seconds to keep the state
-- ARGV[2] - lease of a task enqueued now, in ms
-- ARGV[3] - the caller's clock, ms since the epoch
-- returns {1, deadline}: enqueue a task (the caller holds the lease until deadline);
--         {0, deadline}: a queued task or a run holds a lease until deadline;
--         {-1, 0}: every request is covered by a finished run (nothing to do)
local ttl = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local now = tonumber(ARGV[3])

local requested = tonumber(redis.call('HGET', KEYS[1], 'req') or '0') or 0
local done = tonumber(redis.call('HGET', KEYS[1], 'done') or '-1') or -1
if requested <= done then
  return {-1, 0}
end
local held = math.max(
  tonumber(redis.call('HGET', KEYS[1], 'queued') or '0') or 0,
  tonumber(redis.call('HGET', KEYS[1], 'running') or '0') or 0)
if held > now then
  return {0, held}
end
local deadline = now + lease
redis.call('HSET', KEYS[1], 'queued', deadline)
redis.call('EXPIRE', KEYS[1], ttl)
return {1, deadline}
