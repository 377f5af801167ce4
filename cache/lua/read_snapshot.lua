-- Read one chunk of a bucket's snapshot: ids in order and their entries (digest and
-- revision), so the caller fetches only the payloads it has not decoded yet.
-- KEYS[1] - the bucket's meta hash
-- ARGV[1], ARGV[2] - stems of the id lists and entry hashes; version N is stem .. N.
--   They carry KEYS[1]'s hash tag, so they live in KEYS[1]'s slot.
-- ARGV[3] - the version to read, or '' for the active one
-- ARGV[4] - offset of the first id
-- ARGV[5] - how many ids at most
-- returns {} when the bucket has no active version;
--         {version, gen, total ids, ids, entries}; entries are '<digest>/<revision>',
--         or false where missing. Total 0 with a version asked for: it expired.
local id_stem = ARGV[1]
local entry_stem = ARGV[2]
local version = ARGV[3]
local offset = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])

if version == '' then
  version = redis.call('HGET', KEYS[1], 'active')
  if not version then
    return {}
  end
end
local gen = redis.call('HGET', KEYS[1], 'gen') or '0'
local total = redis.call('LLEN', id_stem .. version)
local ids = redis.call('LRANGE', id_stem .. version, offset, offset + limit - 1)
if #ids == 0 then
  return {version, gen, total, {}, {}}
end
return {version, gen, total, ids, redis.call('HMGET', entry_stem .. version, unpack(ids))}
