-- Find, and optionally delete, keys that hold a Redis type other than the one this
-- package writes there. Every write to such a key fails with WRONGTYPE; once deleted,
-- the next write recreates it.
-- KEYS[1] - the first key to check; KEYS[2..n] - the others
-- ARGV[1] - '1' to delete the keys of the wrong type, '0' only to report them
-- ARGV[2..n+1] - the type each key must have ('hash', 'string', 'set', 'zset', 'list')
-- returns a flat list: each key of the wrong type, followed by the type it holds
local repair = ARGV[1] == '1'
local found = {}

for i = 1, #KEYS do
  local held = redis.call('TYPE', KEYS[i])['ok']
  if held ~= 'none' and held ~= ARGV[i + 1] then
    found[#found + 1] = KEYS[i]
    found[#found + 1] = held
    if repair then
      redis.call('DEL', KEYS[i])
    end
  end
end
return found
