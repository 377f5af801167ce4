-- Move accounts' last-use times forward, never back, without touching their payloads.
-- KEYS[1] - last-used hash (id -> integer ms)
-- KEYS[2] - account digest hash: an id absent from it is an unknown (or deleted) account
-- KEYS[3] - pending hash of uses not yet written to the source database
-- ARGV[1] - '1' to also record the uses in KEYS[3], '0' not to
-- ARGV[2..] - pairs: account id, last use in ms
-- returns the number of accounts whose cached time moved forward
local record_pending = ARGV[1] == '1'
local first_pair = 2
-- unpack() is bounded by Lua's C stack (8000 slots): work in chunks.
local chunk = 2000
local moved = 0

local count = (#ARGV - first_pair + 1) / 2
for first = 0, count - 1, chunk do
  local last = math.min(first + chunk, count) - 1
  local ids = {}
  for n = first, last do
    ids[#ids + 1] = ARGV[first_pair + 2 * n]
  end
  local known = redis.call('HMGET', KEYS[2], unpack(ids))
  local seen = redis.call('HMGET', KEYS[1], unpack(ids))
  local pending = {}
  if record_pending then
    pending = redis.call('HMGET', KEYS[3], unpack(ids))
  end
  local use_pairs, pending_pairs = {}, {}
  for k = 1, #ids do
    local used = ARGV[first_pair + 2 * (first + k - 1) + 1]
    if known[k] and (not seen[k] or tonumber(used) > tonumber(seen[k])) then
      use_pairs[#use_pairs + 1] = ids[k]
      use_pairs[#use_pairs + 1] = used
    end
    if record_pending and (not pending[k] or tonumber(used) > tonumber(pending[k])) then
      pending_pairs[#pending_pairs + 1] = ids[k]
      pending_pairs[#pending_pairs + 1] = used
    end
  end
  if #use_pairs > 0 then
    redis.call('HSET', KEYS[1], unpack(use_pairs))
    moved = moved + #use_pairs / 2
  end
  if #pending_pairs > 0 then
    redis.call('HSET', KEYS[3], unpack(pending_pairs))
  end
end
return moved
