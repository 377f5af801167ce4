-- Write one chunk of version N of a bucket's snapshot, staged: its keys expire unless
-- N is activated, so a writer that dies or loses leaves nothing behind for long, and
-- nothing readers see changes until activate_snapshot.lua.
-- KEYS[1] - the bucket's meta hash
-- KEYS[2] - the bucket's version counter
-- KEYS[3] - version N's id list
-- KEYS[4] - version N's payload hash (id -> JSON)
-- KEYS[5] - version N's entry hash (id -> '<digest>/<revision>')
-- ARGV[1] - version N
-- ARGV[2] - seconds the staged keys live unless activated
-- ARGV[3] - how many ids this writer staged before this chunk
-- ARGV[4] - account ids of this chunk, in snapshot order, joined by ','
-- ARGV[5] - their entries, joined by ','; digest '-' means no payload (a deleted account)
-- ARGV[6..] - their payloads, one argument each ('' where the digest is '-').
--   Small fields come joined because each script argument costs the server far more
--   than its bytes.
-- returns {STAGED 1, ids staged so far, active version or 0} when written;
--         {STALE 0, floor} when N cannot win any more (nothing written);
--         {UNRESERVED -1, last reserved version} when N was never reserved;
--         {TAKEN -3, ids staged} when the id list holds ids this writer did not stage:
--         after Redis lost its state, another writer reserved the same number
local version = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local before = tonumber(ARGV[3])
local first_payload = 6

local reserved = reserved_version(KEYS[2])
if version > reserved then
  return {-1, reserved}
end
local floor, active = version_floor(KEYS[1])
if version <= floor then
  return {0, floor}
end

-- Only the writer that began the list appends to it: a chunk finds exactly what this
-- writer staged before it.
local held = redis.call('LLEN', KEYS[3])
if held ~= before then
  return {-3, held}
end

local count = #ARGV - first_payload + 1
local ids = split(ARGV[4], count, 'stage_snapshot')
local entries = split(ARGV[5], count, 'stage_snapshot')

local payload_pairs, entry_pairs = {}, {}
for k = 1, count do
  entry_pairs[#entry_pairs + 1] = ids[k]
  entry_pairs[#entry_pairs + 1] = entries[k]
  local payload = ARGV[first_payload + k - 1]
  if payload ~= '' then
    payload_pairs[#payload_pairs + 1] = ids[k]
    payload_pairs[#payload_pairs + 1] = payload
  end
end
local staged = redis.call('RPUSH', KEYS[3], unpack(ids))
redis.call('HSET', KEYS[5], unpack(entry_pairs))
if #payload_pairs > 0 then
  redis.call('HSET', KEYS[4], unpack(payload_pairs))
end
for i = 3, 5 do
  redis.call('EXPIRE', KEYS[i], ttl)
end
return {1, staged, active}
