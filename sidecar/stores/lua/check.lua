-- One Check's store plan, executed atomically (sidecar/stores/base.py).
--
-- KEYS: every key the plan touches, in operation order.
-- ARGV[1]: "1" for a shadow plan (run everything, never stop at a deny).
-- ARGV[2..]: the operations, each a code followed by its parameters:
--   A n d1..dn               ActiveCheck over n keys; di "1" when key i denies
--   R                        RevocationCheck over 1 key
--   L n (alg limit period burst cost)*n
--                            LimitCheck over n keys; alg s|t|f (sliding_window,
--                            token_bucket, fixed_window); period in ms
--   C threshold period ttl   CohortCount over 2 keys (counter, member)
--   B n ttl value            BlockSet over n keys
--
-- Reply: {ran, ...} where ran is how many operations ran, followed by each
-- operation's fields:
--   A: (value or nil, pttl)*n      R: revoked(0|1)
--   L: allowed(0|1) (remaining reset_ms retry_after_ms)*n
--   C: count became_member(0|1) member(0|1)      B: 1
--
-- The arithmetic is sidecar/ratelimit/algorithms.py, integer for integer: all
-- numbers stay below 2^53, where Lua's doubles are exact, and division goes
-- through idiv so that it floors exactly as Python's // does.
-- Time is the server's TIME, so every replica agrees on window boundaries.
-- States are stored as a zero byte and little-endian doubles (struct.pack): every
-- number stays below 2^53, so a double holds it exactly, and packing costs no
-- number formatting or parsing (which was a tenth of this script's time). States
-- an earlier version wrote as text ("window count previous", "tat") are still
-- read, so upgraded replicas keep counting where the old ones were; an earlier
-- version that reads a packed state starts that window afresh.

if redis.replicate_commands then
  redis.replicate_commands() -- Redis < 5: allow writes after TIME
end

local call = redis.call
local time = call('TIME')
local now_s, now_frac = tonumber(time[1]), tonumber(time[2])
local now_us = now_s * 1000000 + now_frac
local now_ms = now_s * 1000 + math.floor(now_frac / 1000)

local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

local function ceil_div(a, b)
  return -idiv(-a, b)
end

local pack, sunpack = struct.pack, struct.unpack
local byte, match = string.byte, string.match

-- The n numbers of a stored state, or nil when there is none or it is unreadable.
local function numbers(raw, n)
  if not raw then
    return nil
  end
  if byte(raw, 1) == 0 then
    if #raw ~= 1 + 8 * n then
      return nil
    end
    if n == 3 then
      local a, b, c = sunpack('<ddd', raw, 2)
      return a, b, c
    elseif n == 2 then
      local a, b = sunpack('<dd', raw, 2)
      return a, b
    end
    return (sunpack('<d', raw, 2))
  end
  if n == 3 then
    local a, b, c = match(raw, '^(%-?%d+) (%d+) (%d+)$')
    if a then
      return tonumber(a), tonumber(b), tonumber(c)
    end
  elseif n == 2 then
    local a, b = match(raw, '^(%-?%d+) (%d+)$')
    if a then
      return tonumber(a), tonumber(b)
    end
  else
    return tonumber(raw)
  end
  return nil
end

local function state3(a, b, c)
  return pack('<Bddd', 0, a, b, c)
end

-- (window, current, previous, elapsed) of a sliding state at now_ms.
local function slide(raw, period)
  local window = idiv(now_ms, period)
  local elapsed = now_ms - window * period
  local current, previous = 0, 0
  local w, c, p = numbers(raw, 3)
  if w then
    if w >= window then
      window, current, previous = w, c, p
    elseif w == window - 1 then
      previous = c
    end
  end
  return window, current, previous, elapsed
end

-- Each limit answers {allowed, remaining, reset_ms, retry_after_ms, state, ttl_ms}.
local function sliding_window(raw, limit, period, cost)
  local window, current, previous, elapsed = slide(raw, period)
  local window_left = period - elapsed
  local used = previous * window_left + current * period
  local capacity = limit * period
  local need = cost * period
  if used + need <= capacity then
    return {true, idiv(capacity - used - need, period), window_left, 0,
      state3(window, current + cost, previous), window_left + period}
  end
  local retry
  if cost > limit then
    retry = window_left + period
  elseif current + cost <= limit then
    retry = period - idiv((limit - current - cost) * period, previous) - elapsed
  else
    retry = window_left + period - idiv((limit - cost) * period, current)
  end
  return {false, idiv(math.max(0, capacity - used), period), retry, retry}
end

local function fixed_window(raw, limit, period, cost)
  local window = idiv(now_ms, period)
  local elapsed = now_ms - window * period
  local count = 0
  local w, c = numbers(raw, 2)
  if w and w >= window then
    window, count = w, c
  end
  local window_left = period - elapsed
  if count + cost <= limit then
    return {true, limit - count - cost, window_left, 0,
      pack('<Bdd', 0, window, count + cost), window_left}
  end
  return {false, math.max(0, limit - count), window_left, window_left}
end

local function token_bucket(raw, limit, period, burst, cost)
  local interval = ceil_div(period * 1000, limit)
  if burst == 0 then
    burst = limit
  end
  local capacity = burst * interval
  local tat = now_us
  local stored = numbers(raw, 1)
  if stored and stored > now_us then
    tat = stored
  end
  local new_tat = tat + cost * interval
  local allow_at = new_tat - capacity
  if allow_at <= now_us then
    local full_in = ceil_div(new_tat - now_us, 1000)
    return {true, idiv(capacity - (new_tat - now_us), interval), full_in, 0,
      pack('<Bd', 0, new_tat), math.max(1, full_in)}
  end
  local retry = ceil_div(allow_at - now_us, 1000)
  return {false, math.max(0, idiv(capacity - (tat - now_us), interval)), retry, retry}
end

-- Every key the plan names is read with ONE MGET up front (each redis.call costs
-- about as much as the arithmetic of a whole limit). Writes go through put(), which
-- keeps the cache current, so an operation always sees what an earlier one wrote.
local cached = {}
if #KEYS > 0 then
  local values = call('MGET', unpack(KEYS))
  for i = 1, #KEYS do
    cached[KEYS[i]] = values[i]
  end
end

local function put(key, value, ttl_ms)
  call('SET', key, value, 'PX', ttl_ms)
  cached[key] = value
end

local shadow = ARGV[1] == '1'
local out = {0}
local n_out = 1
local a = 2 -- ARGV cursor
local k = 1 -- KEYS cursor
local ran = 0
local nargs = #ARGV

while a <= nargs do
  local op = ARGV[a]
  local denies = false
  if op == 'A' then
    local n = tonumber(ARGV[a + 1])
    for i = 1, n do
      local value = cached[KEYS[k + i - 1]]
      if value then
        out[n_out + 1] = value
        out[n_out + 2] = math.max(1, call('PTTL', KEYS[k + i - 1]))
        if ARGV[a + 1 + i] == '1' then
          denies = true
        end
      else
        out[n_out + 1] = false
        out[n_out + 2] = 0
      end
      n_out = n_out + 2
    end
    k = k + n
    a = a + 2 + n
  elseif op == 'R' then
    local revoked = cached[KEYS[k]] and 1 or 0
    out[n_out + 1] = revoked
    n_out = n_out + 1
    denies = revoked == 1
    k = k + 1
    a = a + 1
  elseif op == 'L' then
    local n = tonumber(ARGV[a + 1])
    a = a + 2
    local answers = {}
    local costs = {}
    local all = true
    for i = 1, n do
      local alg = ARGV[a]
      local limit, period = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
      local burst, cost = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
      local raw = cached[KEYS[k + i - 1]]
      local answer
      if alg == 's' then
        answer = sliding_window(raw, limit, period, cost)
      elseif alg == 't' then
        answer = token_bucket(raw, limit, period, burst, cost)
      else
        answer = fixed_window(raw, limit, period, cost)
      end
      answers[i] = answer
      costs[i] = cost
      if not answer[1] then
        all = false
      end
      a = a + 5
    end
    out[n_out + 1] = all and 1 or 0
    n_out = n_out + 1
    for i = 1, n do
      local answer = answers[i]
      local remaining = answer[2]
      if all then
        put(KEYS[k + i - 1], answer[5], answer[6])
      elseif answer[1] then
        remaining = remaining + costs[i] -- had room, but nothing was consumed
      end
      out[n_out + 1] = remaining
      out[n_out + 2] = answer[3]
      out[n_out + 3] = answer[4]
      n_out = n_out + 3
    end
    k = k + n
    denies = not all
  elseif op == 'C' then
    local threshold, period, ttl = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local counter, member_key = KEYS[k], KEYS[k + 1]
    local window, current, previous, elapsed = slide(cached[counter], period)
    current = current + 1
    local window_left = period - elapsed
    local count = idiv(previous * window_left + current * period, period)
    put(counter, state3(window, current, previous), window_left + period)
    local member = cached[member_key] and 1 or 0
    local became = 0
    if member == 0 and count >= threshold then
      put(member_key, '1', ttl)
      member = 1
      became = 1
    end
    out[n_out + 1] = count
    out[n_out + 2] = became
    out[n_out + 3] = member
    n_out = n_out + 3
    k = k + 2
    a = a + 4
  elseif op == 'B' then
    local n, ttl, value = tonumber(ARGV[a + 1]), ARGV[a + 2], ARGV[a + 3]
    for i = 0, n - 1 do
      put(KEYS[k + i], value, ttl)
    end
    out[n_out + 1] = 1
    n_out = n_out + 1
    k = k + n
    a = a + 4
  else
    return redis.error_reply('ERR abuse-sidecar check.lua: unknown operation ' .. tostring(op))
  end
  ran = ran + 1
  if denies and not shadow then
    break
  end
end

out[1] = ran
return out
