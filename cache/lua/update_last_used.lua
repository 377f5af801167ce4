-- Move accounts' last-use times forward, never back, without touching their payloads.
-- KEYS[1] - last-used hash (id -> integer ms)
-- KEYS[2] - account payload hash, to ignore unknown accounts
-- KEYS[3] - pending hash of uses not yet written to the source database
-- ARGV[1] - '1' to also record the uses in KEYS[3], '0' not to
-- ARGV[2..] - pairs: account id, last use in ms
-- returns the number of accounts whose cached time moved forward
local record_pending = ARGV[1] == '1'
local moved = 0

for i = 2, #ARGV, 2 do
  local id, used = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('HEXISTS', KEYS[2], id) == 1 then
    local seen = redis.call('HGET', KEYS[1], id)
    if not seen or used > tonumber(seen) then
      redis.call('HSET', KEYS[1], id, used)
      moved = moved + 1
    end
  end
  if record_pending then
    local pending = redis.call('HGET', KEYS[3], id)
    if not pending or used > tonumber(pending) then
      redis.call('HSET', KEYS[3], id, used)
    end
  end
end
return moved
