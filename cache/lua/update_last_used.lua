-- Move accounts' last-use times forward, never back, without touching their payloads,
-- and log which moved so near caches fetch only the changes.
-- KEYS[1] - last-used hash (id -> integer ms)
-- KEYS[2] - account digest hash: an id absent from it is an unknown (or deleted) account
-- KEYS[3] - pending hash of uses not yet written to the source database
-- KEYS[4] - last-used log: one member per call, '<seq>:<id>,<id>...', scored by seq
-- KEYS[5] - touch sequence counter
-- ARGV[1] - '1' to also record the uses in KEYS[3], '0' not to
-- ARGV[2] - account ids, joined by ','
-- ARGV[3] - their last uses in ms, joined by ','
--   Joined because each script argument costs the server far more than its bytes.
-- ARGV[4] - batches the log keeps
-- returns the number of accounts whose cached time moved forward
local record_pending = ARGV[1] == '1'

local ids = split(ARGV[2], nil, 'update_last_used')
local uses = split(ARGV[3], #ids, 'update_last_used')

local known = redis.call('HMGET', KEYS[2], unpack(ids))
local seen = redis.call('HMGET', KEYS[1], unpack(ids))
local pending = {}
if record_pending then
  pending = redis.call('HMGET', KEYS[3], unpack(ids))
end
local use_pairs, moved, pending_pairs = {}, {}, {}
for k = 1, #ids do
  local used = uses[k]
  if known[k] and (not seen[k] or tonumber(used) > tonumber(seen[k])) then
    use_pairs[#use_pairs + 1] = ids[k]
    use_pairs[#use_pairs + 1] = used
    moved[#moved + 1] = ids[k]
  end
  if record_pending and (not pending[k] or tonumber(used) > tonumber(pending[k])) then
    pending_pairs[#pending_pairs + 1] = ids[k]
    pending_pairs[#pending_pairs + 1] = used
  end
end
if #use_pairs > 0 then
  redis.call('HSET', KEYS[1], unpack(use_pairs))
  local seq = redis.call('INCR', KEYS[5])
  redis.call('ZADD', KEYS[4], seq, seq .. ':' .. table.concat(moved, ','))
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', seq - tonumber(ARGV[4]))
end
if #pending_pairs > 0 then
  redis.call('HSET', KEYS[3], unpack(pending_pairs))
end
return #use_pairs / 2
