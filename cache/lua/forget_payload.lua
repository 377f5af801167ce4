-- Forget the digest of a payload that does not decode, if it is still that payload.
-- Writers skip a payload whose digest did not change, so garbage under an unchanged
-- digest would survive every rebuild; without a digest, the next write of the account
-- (a rebuild of any bucket holding it, or set_account) stores it again.
-- KEYS[1] - account payload hash (id -> JSON)
-- KEYS[2] - account digest hash (id -> digest of the payload)
-- ARGV[1] - account id
-- ARGV[2] - the payload that did not decode
-- returns 1 when the digest was dropped, 0 when the payload had been replaced meanwhile
local id = ARGV[1]
local corrupt = ARGV[2]

if redis.call('HGET', KEYS[1], id) ~= corrupt then
  return 0
end
return redis.call('HDEL', KEYS[2], id)
