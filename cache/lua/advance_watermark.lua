-- Move the outbox watermark forward (never back) and keep the set of ids skipped over.
-- KEYS[1] - the watermark
-- KEYS[2] - sorted set of ids below the watermark not seen yet, scored by first-seen ms
-- ARGV[1] - the new watermark
-- ARGV[2] - now, integer ms
-- ARGV[3] - how many gap ids follow
-- ARGV[4 .. 3+n] - gap ids to remember (ids between the old and new watermark not seen)
-- ARGV[4+n ..] - ids no longer missing (applied, or given up on)
-- returns 1 when the watermark moved forward, 0 when it was already there or beyond
local target = tonumber(ARGV[1])
local now = ARGV[2]
local gap_count = tonumber(ARGV[3])
local first_gap = 4

for i = first_gap, first_gap + gap_count - 1 do
  redis.call('ZADD', KEYS[2], 'NX', now, ARGV[i])
end
for i = first_gap + gap_count, #ARGV do
  redis.call('ZREM', KEYS[2], ARGV[i])
end
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if target <= current then
  return 0
end
redis.call('SET', KEYS[1], target)
return 1
