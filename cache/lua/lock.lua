-- Take a lock, or renew it when the caller already holds it.
-- KEYS[1] - the lock
-- ARGV[1] - the caller's token
-- ARGV[2] - time to live in ms
-- returns 1 when the caller holds the lock, 0 when someone else does
local token = ARGV[1]
local ttl = tonumber(ARGV[2])

if redis.call('SET', KEYS[1], token, 'NX', 'PX', ttl) then
  return 1
end
-- Same token: a redelivered task taking back the lock of its own killed run.
if redis.call('GET', KEYS[1]) == token then
  redis.call('PEXPIRE', KEYS[1], ttl)
  return 1
end
return 0
