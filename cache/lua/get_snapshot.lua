-- Read the active snapshot of one bucket with its account payloads and last-use times,
-- in one atomic step.
-- KEYS[1] - the bucket's meta hash (field 'active' holds the active version)
-- KEYS[2] - account payload hash (id -> JSON)
-- KEYS[3] - last-used hash (id -> integer ms)
-- ARGV[1] - stem of the bucket's snapshot lists; version N is ARGV[1] .. N.
--           It carries KEYS[1]'s hash tag, so it always lives in KEYS[1]'s slot.
-- returns {} when the bucket has no active version or its snapshot is empty;
--         otherwise {version, ids, payloads, last_used}: payloads and last_used are
--         aligned with ids and hold false where an entry is missing
local stem = ARGV[1]

local active = redis.call('HGET', KEYS[1], 'active')
if not active then
  return {}
end
local ids = redis.call('LRANGE', stem .. active, 0, -1)
if #ids == 0 then
  return {}
end

-- unpack() is bounded by Lua's C stack (8000 slots): read in chunks.
local chunk = 4000
if #ids <= chunk then
  return {active, ids, redis.call('HMGET', KEYS[2], unpack(ids)),
          redis.call('HMGET', KEYS[3], unpack(ids))}
end
local payloads, last_used = {}, {}
for first = 1, #ids, chunk do
  local last = math.min(first + chunk - 1, #ids)
  local p = redis.call('HMGET', KEYS[2], unpack(ids, first, last))
  local l = redis.call('HMGET', KEYS[3], unpack(ids, first, last))
  for k = 1, #p do
    payloads[first + k - 1] = p[k]
    last_used[first + k - 1] = l[k]
  end
end
return {active, ids, payloads, last_used}
