//! The Lua scripts of the Redis store: each decision is one round trip.

/// Counter window: INCR, and a TTL when the key has none (the first hit, or a key that lost
/// it), so the window is fixed and the key always expires.
pub(super) const INCR_WINDOW: &str = r"
local n = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
";

/// Pike in one step: an existing ban answers at once; otherwise count, and ban when over.
/// Returns {banned, remaining ms or count, new}.
/// Flood decisions: for each source i, KEYS[2i-1] is its counter and KEYS[2i] its ban, and
/// ARGV[5i-4..5i] are the limit, window ms, ban ms, ban value and the hits to count. A live
/// ban answers {1, ms left, 0}; otherwise the hits are counted in a fixed window and the count
/// that goes over the limit sets the ban ({1, ban ms, 1}); else {0, count, 0}. Answers are
/// flattened, three numbers per source.
pub(super) const FLOOD: &str = r"
local out = {}
for i = 1, #KEYS / 2 do
  local c, b, a = KEYS[2 * i - 1], KEYS[2 * i], 5 * i - 5
  local limit, win, ban, val, hits =
    tonumber(ARGV[a + 1]), ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], tonumber(ARGV[a + 5])
  local left = redis.call('PTTL', b)
  if left > 0 then
    out[#out + 1], out[#out + 2], out[#out + 3] = 1, left, 0
  else
    local n
    if hits > 0 then
      n = redis.call('INCRBY', c, hits)
      if redis.call('PTTL', c) < 0 then redis.call('PEXPIRE', c, win) end
    else
      n = tonumber(redis.call('GET', c) or '0') or 0
    end
    if n > limit then
      redis.call('SET', b, val, 'PX', ban)
      redis.call('DEL', c)
      out[#out + 1], out[#out + 2], out[#out + 3] = 1, tonumber(ban), 1
    else
      out[#out + 1], out[#out + 2], out[#out + 3] = 0, n, 0
    end
  end
end
return out
";

/// A batch: KEYS[i] is the key of operation i, ARGV[3i-2..3i] its code and two arguments.
/// Each operation answers {1, value}, {2} for a missing value or {0, error}; an error in one
/// operation (redis.pcall) does not stop the others.
pub(super) const BATCH: &str = r"
local out = {}
local function res(r)
  if type(r) == 'table' and r.err then return {0, r.err} end
  if r == false then return {2} end
  return {1, r}
end
for i, k in ipairs(KEYS) do
  local op, a, b = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
  local r
  if op == 'g' then
    r = redis.pcall('GET', k)
  elseif op == 'w' then
    r = redis.pcall('INCR', k)
    if type(r) == 'number' and redis.call('PTTL', k) < 0 then redis.call('PEXPIRE', k, a) end
  elseif op == 'i' then
    r = redis.pcall('INCRBY', k, a)
    if type(r) == 'number' then redis.call('PEXPIRE', k, b) end
  elseif op == 's' then
    r = redis.pcall('SET', k, a, 'PX', b)
    if type(r) == 'table' and r.ok then r = 1 end
  elseif op == 'd' then
    r = redis.pcall('DEL', k)
  elseif op == 'h' then
    r = redis.pcall('HGETALL', k)
  elseif op == 'm' then
    r = redis.pcall('GET', k)
    if not (type(r) == 'table' and r.err) then
      local before = 0
      if r then before = tonumber(r) end
      if before == nil then
        r = {err = 'value is not an integer'}
      else
        if tonumber(a) > before then redis.call('SET', k, a, 'PX', b) end
        r = before
      end
    end
  else
    r = {err = 'unknown batch operation'}
  end
  out[i] = res(r)
end
return out
";

/// Ends a counted call: takes the dialog key (KEYS[1]) and decrements its bucket,
/// `ARGV[1]<segment>:<bucket>`, while that bucket lives. ARGV[2..4]: bucket length, dialog
/// timeout and now, in ms. Returns 1 when this call took the dialog key, else 0.
/// Releases: KEYS[i] is the dialog key of release i, ARGV[4i-3..4i] its counter prefix,
/// bucket ms, timeout ms and now (ms since the epoch). Answers 1 per release that freed a
/// slot, 0 per dialog already released.
pub(super) const RELEASE_DIALOG: &str = r"
local out = {}
for i, dlg in ipairs(KEYS) do
  local a = 4 * i - 4
  local v = redis.call('GET', dlg)
  if not v then
    out[i] = 0
  else
    out[i] = 1
    redis.call('DEL', dlg)
    local b, seg = string.match(v, '^(%d+)|(.+)$')
    if b and #b <= 18 then
      local expire = (tonumber(b) + 1) * tonumber(ARGV[a + 2]) + tonumber(ARGV[a + 3])
        - tonumber(ARGV[a + 4])
      local k = ARGV[a + 1] .. seg .. ':' .. b
      if expire >= 1 and redis.call('EXISTS', k) == 1 then
        redis.call('DECRBY', k, 1)
        redis.call('PEXPIRE', k, math.floor(expire))
      end
    end
  end
end
return out
";

/// A bounded SCAN of the keys matching ARGV[1], with value and remaining TTL in ms (-1 for a
/// key of another type). ARGV[2] caps the keys returned, ARGV[3] the SCAN calls.
pub(super) const LIST: &str = r"
local out = {}
local cursor = '0'
local calls = 0
local limit = tonumber(ARGV[2])
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  calls = calls + 1
  for _, k in ipairs(r[2]) do
    if #out >= limit * 3 then break end
    local t = redis.call('TYPE', k)['ok']
    local v = ''
    if t == 'string' then v = redis.call('GET', k) end
    table.insert(out, k)
    table.insert(out, v)
    table.insert(out, redis.call('PTTL', k))
  end
until cursor == '0' or #out >= limit * 3 or calls >= tonumber(ARGV[3])
return out
";

/// Provisioning a hash: HSET of the field/value pairs ARGV[2..], then ARGV[1] ms of TTL, or
/// no expiry when it is 0.
pub(super) const HASH_SET: &str = r"
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if ARGV[1] == '0' then redis.call('PERSIST', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 0
";
