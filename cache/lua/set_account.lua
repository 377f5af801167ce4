-- Store one account payload unless a newer revision is stored already.
-- KEYS[1] - account payload hash (id -> JSON)
-- KEYS[2] - account revision hash (id -> revision)
-- KEYS[3] - account digest hash (id -> digest of the payload)
-- KEYS[4] - last-used hash (id -> integer ms)
-- KEYS[5] - last-used log: one member per call, '<seq>:<id>,<id>...', scored by seq
-- KEYS[6] - touch sequence counter
-- KEYS[7] - the account's bucket index (bucket -> version that lists it)
-- ARGV[1] - account id
-- ARGV[2] - revision (-1 for none)
-- ARGV[3] - payload
-- ARGV[4] - digest of the payload
-- ARGV[5] - last use in ms, or '' for none
-- returns {1, index as a flat list bucket, version, ...} when the payload was stored
--         (read in the same step, so a writer indexing a version after it sees this
--         payload, and one before it is in the list); {0, {}} when a newer revision
--         kept its place
local id = ARGV[1]
local revision = tonumber(ARGV[2])
local payload = ARGV[3]
local digest = ARGV[4]
local used = ARGV[5]

if used ~= '' then
  local seen = redis.call('HGET', KEYS[4], id)
  if not seen or tonumber(used) > tonumber(seen) then
    redis.call('HSET', KEYS[4], id, used)
    local seq = redis.call('INCR', KEYS[6])
    redis.call('ZADD', KEYS[5], seq, seq .. ':' .. id)
  end
end
local stored = redis.call('HGET', KEYS[2], id)
if stored and revision < tonumber(stored) then
  return {0, {}}
end
redis.call('HSET', KEYS[2], id, revision)
if redis.call('HGET', KEYS[3], id) ~= digest then
  redis.call('HSET', KEYS[1], id, payload)
  redis.call('HSET', KEYS[3], id, digest)
end
return {1, redis.call('HGETALL', KEYS[7])}
