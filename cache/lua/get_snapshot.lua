-- Read the active snapshot of one bucket with its account payloads and last-use times,
-- in one atomic step. Payloads are sent only when they differ from what the caller
-- decoded last time: the caller passes the fingerprint of its last read (a SHA-1 of the
-- payload digests in snapshot order), and an unchanged snapshot costs no payload bytes.
-- KEYS[1] - the bucket's meta hash (field 'active' holds the active version)
-- KEYS[2] - account payload hash (id -> JSON)
-- KEYS[3] - account digest hash (id -> digest of the payload)
-- KEYS[4] - last-used hash (id -> integer ms)
-- ARGV[1] - stem of the bucket's snapshot lists; version N is ARGV[1] .. N.
--           It carries KEYS[1]'s hash tag, so it always lives in KEYS[1]'s slot.
-- ARGV[2] - fingerprint of the caller's last read of this bucket, or ''
-- returns {} when the bucket has no active version or its snapshot is empty;
--         {version, false, id} when the payload of account `id` is missing;
--         {version, fingerprint, last uses joined by ','} when the fingerprint matches;
--         {version, fingerprint, last uses joined by ',', ids, payloads} otherwise.
--         Last uses are integer ms, empty where unknown.
local stem = ARGV[1]
local known = ARGV[2]
-- unpack() is bounded by Lua's C stack (8000 slots): read in chunks.
local chunk = 4000

local active = redis.call('HGET', KEYS[1], 'active')
if not active then
  return {}
end
local ids = redis.call('LRANGE', stem .. active, 0, -1)
if #ids == 0 then
  return {}
end

-- The values of `ids` in hash `key`, in order; a missing one is `default`, or, without
-- a default, ends the read: nil and the id it was missing for.
local function read_all(key, default)
  local values = {}
  for first = 1, #ids, chunk do
    local last = math.min(first + chunk - 1, #ids)
    local got = redis.call('HMGET', key, unpack(ids, first, last))
    for k = 1, last - first + 1 do
      local value = got[k] or default
      if not value then
        return nil, ids[first + k - 1]
      end
      values[first + k - 1] = value
    end
  end
  return values
end

local digests, missing = read_all(KEYS[3], nil)
if not digests then
  return {active, false, missing}
end
local fingerprint = redis.sha1hex(table.concat(digests, ','))
local joined_uses = table.concat(read_all(KEYS[4], ''), ',')
if fingerprint == known then
  return {active, fingerprint, joined_uses}
end
local payloads
payloads, missing = read_all(KEYS[2], nil)
if not payloads then
  return {active, false, missing}
end
return {active, fingerprint, joined_uses, ids, payloads}
