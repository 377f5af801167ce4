-- Put one account into the active version of a bucket's snapshot at its place in
-- snapshot order (an insert: the version does not list it), or move it there (its
-- priority changed): the id goes before the first of the given followers the version
-- lists, or last when it lists none; its entry and payload are written, the meta
-- count (live accounts) grows for an insert, and near caches are told once, naming the account.
-- Nothing is read but the version's own keys: the cost is two list walks (LREM for a
-- move, LINSERT), not a rebuild.
-- KEYS[1] - the bucket's meta hash
-- KEYS[2] - the bucket's version counter
-- KEYS[3] - version N's id list
-- KEYS[4] - version N's payload hash
-- KEYS[5] - version N's entry hash
-- ARGV[1] - version N, the one the caller found active
-- ARGV[2] - account id
-- ARGV[3] - its revision (-1 for none)
-- ARGV[4] - digest of the payload
-- ARGV[5] - the payload
-- ARGV[6] - the ids that follow the account in snapshot order, nearest first, joined
--           by ',' ('' when none follows it)
-- ARGV[7] - channel told '<bucket> <version> <gen> <account id>'
-- ARGV[8] - the bucket's name
-- returns {status, active version or 0, last reserved version}; status IDLE 0 when the
--         bucket has no active version, MOVED 1 when another version than N is active
--         (call again naming it), STALE 2 when N holds a newer revision (or a removal
--         or deletion noted after this revision: x.25, x.5), PLACED 3 when placed
--         before a follower, APPENDED 4 when placed last (no follower listed). A
--         reserved version above the active one is a writer that may have read the
--         source before this change, and will not have it.
local version = tonumber(ARGV[1])
local id = ARGV[2]
local revision = tonumber(ARGV[3])
local entry = ARGV[4] .. '/' .. ARGV[3]

local active = active_version(KEYS[1])
local reserved = reserved_version(KEYS[2])
if active == 0 then
  return {0, 0, reserved}
end
if active ~= version then
  return {1, active, reserved}
end
local held = redis.call('HGET', KEYS[5], id)
if held then
  local stored = tonumber(string.match(held, '/(.*)$') or '')
  if stored and stored > revision then
    return {2, active, reserved}
  end
end
-- A move, or an entry left by a removal: the id leaves its old place first.
if held then
  redis.call('LREM', KEYS[3], 1, id)
end
local placed = 0
for _, follower in ipairs(split(ARGV[6])) do
  if follower ~= '' and follower ~= id and redis.call('HEXISTS', KEYS[5], follower) == 1 then
    placed = redis.call('LINSERT', KEYS[3], 'BEFORE', follower, id)
    break
  end
end
local status = 3
if placed <= 0 then
  redis.call('RPUSH', KEYS[3], id)
  status = 4
end
-- count is the version's live accounts: a move keeps it, a new or removed one adds one.
if not held or string.sub(held, 1, 2) == '-/' then
  redis.call('HINCRBY', KEYS[1], 'count', 1)
end
redis.call('HSET', KEYS[5], id, entry)
redis.call('HSET', KEYS[4], id, ARGV[5])
announce(KEYS[1], ARGV[7], ARGV[8], version, id)
return {status, active, reserved}
