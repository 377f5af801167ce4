-- Start a new epoch of the cache's state, with the outbox position taken from the
-- source, if the epoch is still the one the caller saw (absent after Redis lost its
-- data). Several workers may notice the loss at once: exactly one of them wins.
-- KEYS[1] - the epoch
-- KEYS[2] - the outbox watermark
-- KEYS[3] - sorted set of outbox ids below the watermark not seen yet
-- ARGV[1] - the new epoch (a random id)
-- ARGV[2] - the epoch the caller saw, or '' when there was none
-- ARGV[3] - the new watermark (the source's highest outbox id, covered by a full read)
-- ARGV[4] - now, integer ms (when each gap was first missed)
-- ARGV[5..] - ids at or below the new watermark not visible yet
-- returns 1 when this call started the new epoch, 0 when the epoch had moved on
local new_epoch = ARGV[1]
local seen = ARGV[2]
local watermark = ARGV[3]
local now = ARGV[4]
local first_gap = 5

local current = redis.call('GET', KEYS[1]) or ''
if current ~= seen then
  return 0
end
redis.call('SET', KEYS[1], new_epoch)
-- Whatever the position keys hold (nothing, garbage, a wrong type) is replaced.
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('SET', KEYS[2], watermark)
for i = first_gap, #ARGV do
  redis.call('ZADD', KEYS[3], now, ARGV[i])
end
return 1
