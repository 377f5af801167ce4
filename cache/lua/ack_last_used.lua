-- Drop pending last-use times that reached the source database, keeping newer ones.
-- KEYS[1] - pending hash (id -> integer ms)
-- ARGV[1..] - pairs: account id, the time that was written
-- returns the number of entries dropped
local dropped = 0
for i = 1, #ARGV, 2 do
  local id, written = ARGV[i], tonumber(ARGV[i + 1])
  local pending = redis.call('HGET', KEYS[1], id)
  -- A newer touch that arrived while the batch was being written stays pending.
  if pending and tonumber(pending) <= written then
    redis.call('HDEL', KEYS[1], id)
    dropped = dropped + 1
  end
end
return dropped
