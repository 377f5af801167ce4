-- Shared by every script: the loader puts this text before each one, so a rule written
-- here is the same in all of them (and a script stays one EVAL, with nothing to load
-- on the server beforehand).
-- It defines local functions only, and touches no key but those passed to them.

-- The parts of `joined` (split at ','), keeping empty ones; raises a script error
-- unless there are `count` of them.
local function split(joined, count, script)
  local parts = {}
  for part in string.gmatch(joined .. ',', '([^,]*),') do
    parts[#parts + 1] = part
  end
  if count and #parts ~= count then
    error(script .. ': ' .. count .. ' values expected, ' .. #parts .. ' joined')
  end
  return parts
end

-- The version a new one must exceed: the active one or, for a retired bucket, the last
-- one it had (reviving a bucket still moves versions forward).
local function version_floor(meta)
  local active = tonumber(redis.call('HGET', meta, 'active') or '0')
  return math.max(active, tonumber(redis.call('HGET', meta, 'retired') or '0')), active
end

-- The last version reserved with INCR on the bucket's counter.
local function reserved_version(counter)
  return tonumber(redis.call('GET', counter) or '0')
end

-- The active version of a bucket, 0 for none.
local function active_version(meta)
  return tonumber(redis.call('HGET', meta, 'active') or '0')
end

-- Tell near caches that what readers see of a bucket changed: '<bucket> <version> <gen>',
-- and ' <account id>' after it when the change was to that one account (its id list
-- place, entry and payload are all that changed). gen grows by one per announcement.
local function announce(meta, channel, bucket, version, account)
  local gen = redis.call('HINCRBY', meta, 'gen', 1)
  local message = bucket .. ' ' .. version .. ' ' .. gen
  if account then
    message = message .. ' ' .. account
  end
  redis.call('PUBLISH', channel, message)
  return gen
end
