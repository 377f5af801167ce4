-- Release a lock only if the caller still holds it.
-- KEYS[1] - the lock
-- ARGV[1] - the caller's token
-- returns 1 when released, 0 when the lock had expired or belongs to someone else
local token = ARGV[1]

if redis.call('GET', KEYS[1]) == token then
  return redis.call('DEL', KEYS[1])
end
return 0
