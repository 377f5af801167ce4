-- Read one chunk of a bucket's snapshot: ids in order and their entries (digest and
-- revision), so the caller fetches only the payloads it has not decoded yet.
-- The caller names the version it expects to be active (the last one it saw): every key
-- arrives in KEYS, and a caller that guessed wrong is told the active version.
-- KEYS[1] - the bucket's meta hash
-- KEYS[2] - the expected version's id list
-- KEYS[3] - the expected version's entry hash
-- ARGV[1] - the expected version (0 when the caller knows none)
-- ARGV[2] - offset of the first id
-- ARGV[3] - how many ids at most
-- returns {} when the bucket has no active version;
--         {active version} when it is not the one expected (read again with it);
--         {version, gen, total ids, ids, entries}; entries are '<digest>/<revision>',
--         or false where missing. Total 0: the version expired.
local expected = tonumber(ARGV[1])
local offset = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])

local active = active_version(KEYS[1])
if active == 0 then
  return {}
end
if active ~= expected then
  return {active}
end
local gen = redis.call('HGET', KEYS[1], 'gen') or '0'
local total = redis.call('LLEN', KEYS[2])
local ids = redis.call('LRANGE', KEYS[2], offset, offset + limit - 1)
if #ids == 0 then
  return {active, gen, total, {}, {}}
end
return {active, gen, total, ids, redis.call('HMGET', KEYS[3], unpack(ids))}
