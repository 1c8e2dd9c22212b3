-- check-v1.lua: the check script of protocol 1 before budgets (two string keys per user and
-- provider, one per window), kept for bench/compare: redis-benchmark runs it as the baseline.
--
-- KEYS: the bases of one or more keys. ARGV, for each key in turn: limit per minute, limit per
-- day (-1: unlimited), the number of checks n, then the cost of each of the n checks, applied in
-- order. Returns {now_ms, then per check of every key in turn: deny bits, minute count, day
-- count}. Each check adds its cost to both windows and takes it back if either is over: the
-- script is atomic, so nobody sees the difference, and the common case (allowed) costs two
-- INCRBYs instead of two GETs and two SETs. A window's key expires with it (plus a margin).
-- The cost goes to INCRBY as the string it came as, and "1" needs no tonumber: Lua numbers to and
-- from strings (printf, strtod) were a tenth of Redis's work per check.
-- Many keys in one call share Redis's per-call cost (most of a short script's); the keys of one
-- base share its hash tag, but different bases do not, so this needs one Redis, not a Cluster.
-- A key that Redis refuses to count (of another type, or not a number: written by someone
-- else) fails that key alone: its checks come back with deny -1 and the error in place of the
-- minute count, the minute increment already made for the check is taken back, and the checks
-- of the other keys in the call are answered as usual.
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local sm = ':m:' .. math.floor(sec / 60)
local sd = ':d:' .. math.floor(sec / 86400)
local em = tostring(120 - sec % 60)
local ed = tostring(90000 - sec % 86400)
local out = {now}
local a = 1
for k = 1, #KEYS do
  local lm = tonumber(ARGV[a])
  local ld = tonumber(ARGV[a + 1])
  local last = a + 2 + tonumber(ARGV[a + 2])
  local km = KEYS[k] .. sm
  local kd = KEYS[k] .. sd
  local err = nil
  for i = a + 3, last do
    local s = ARGV[i]
    local c = 1
    if s ~= '1' then c = tonumber(s) end
    local um = 0
    local ud = 0
    local deny = -1
    if not err and lm >= 0 then
      um = redis.pcall('INCRBY', km, s)
      if type(um) == 'table' then err = um.err
      elseif um == c then redis.call('EXPIRE', km, em) end
    end
    if not err and ld >= 0 then
      ud = redis.pcall('INCRBY', kd, s)
      if type(ud) == 'table' then
        err = ud.err
        if lm >= 0 then redis.call('DECRBY', km, s) end
      elseif ud == c then redis.call('EXPIRE', kd, ed) end
    end
    if err then
      um = err
      ud = 0
    else
      deny = 0
      if lm >= 0 and um > lm then deny = deny + 1 end
      if ld >= 0 and ud > ld then deny = deny + 2 end
      if deny ~= 0 and c > 0 then
        if lm >= 0 then um = redis.call('DECRBY', km, s) end
        if ld >= 0 then ud = redis.call('DECRBY', kd, s) end
      end
    end
    out[#out + 1] = deny
    out[#out + 1] = um
    out[#out + 1] = ud
  end
  a = last + 1
end
return out
