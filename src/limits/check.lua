-- check.lua: the limiter's one script, for checks (ARGV[1] = 'c') and settles ('s'), many of
-- them per call (src/limits/limiter.c sends it; scripts/embed_text.py embeds it). Keep it under
-- 16 KB without its comment lines (the build blanks them): a Redis that wants AUTH refuses a
-- longer SCRIPT LOAD before it as a protocol error.
--
-- Layout (PROTOCOL.md, budgets): every key of a user shares the hash tag of its base
-- "prefix{user_id}". A counting scope (a user, with the provider and/or model a rule names) is
-- one hash, base .. suffix: the field w (m minute, h hour, d day, M month) holds the id of
-- its current window w, and the field named after a dimension (r requests, t tokens, s spend
-- in micro-dollars), window and the window's id ('rm:29942149') the count. Nothing is read
-- before a charge: each count is charged with HINCRBY, which answers the use; one that answers
-- just the charge may be its window's first, and once the user's counts are charged, such a
-- hash's window fields are read, once (roll_key): a window that has moved on drops its counts
-- and alert markers, and when the hash's longest current window is one that moved, its expiry
-- moves to a minute after that window's end (other rules may count a longer one there than
-- this check's). A denied check's charge is given back (atomic: nobody sees it). A
-- reservation is the string base .. ':r:' .. id, made with its
-- expiry (ARGV[2] s) in one SET: "cost tokens spend" (its check's), then per scope a line of
-- the counts charged there with their window's id ('rm:29942149'; "cc": a concurrent slot) and
-- the scope's suffix (which begins with ':'); once settled it is "d", with the expiry it had.
--
-- A concurrent rule ('cc'): a sorted set base .. ':c' .. suffix of the reservations holding a
-- slot, scored by when it lapses (now + TTL, ms); checks drop lapsed ones. (No hash is named
-- so, as suffixes begin ':a', ':p', ':m'; a ':c' after the suffix could end a model's name.)
-- A shadow rule (flag '1') never denies. A rule with an alert share P (1..100) alerts once per
-- user, rule and window (HSETNX of the field 'a' .. count, 'A' for shadow) when a charge takes
-- its use to P%. Windows: Redis's TIME, UTC; months are year * 12 + month - 1.
--
-- 'c': ARGV[3] users, their bases, then nh heads, each: ns, ns scope suffixes, nr, per rule:
-- its scope's index, field (dimension .. window, or 'cc'), limit, '1' for shadow, alert share;
-- then per user: its head's index, nc, per check: cost, tokens, spend, reservation id ('' none).
-- Checks apply in order, atomically over every rule: allowed only if every rule has room (used
-- + amount <= limit, and none at its limit when the amount is 0; a peek, all amounts 0, only
-- past a limit), then all are charged; denied, nothing changes. Returns {now_ms, then per
-- check: 0 allowed or 1 denied, each rule's use after it, the rules it alerted ('' or "2,5")};
-- a scope that cannot be counted (of another type, or not a number) answers -1 and the error
-- for every check of its user, and changes nothing there.
-- 's': ARGV[3] users, their bases, then per user: reservation id, tokens and spend used (''
-- keeps the estimate), '1' to cancel. The difference goes to every count the check charged
-- whose window is still current (cancel gives back all); counts stop at 0; an extra charge to
-- a window the hash has not begun (the check charged it 0) begins it there. Returns {now_ms,
-- then per settle: 0 settled, 1 already settled, 2 unknown, -1 not a reservation, and the
-- alerts its extra charge raised, one a line: "aEW limit percent use suffix" (a, or A for a
-- shadow rule; dimension and window letters), '' for none}.
local rcall, rpcall, tonumber, type, unpack = redis.call, redis.pcall, tonumber, type, unpack
local t = rcall('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local floor = math.floor
local day = floor(sec / 86400)
local wids = {m = tostring(floor(sec / 60)), h = tostring(floor(sec / 3600)), d = tostring(day)}
local left = {m = 60 - sec % 60, h = 3600 - sec % 3600, d = 86400 - sec % 86400}
-- The calendar month (H. Hinnant's civil_from_days, days_from_civil), only when needed.
local function month()
  local z = day + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local mon = mp < 10 and mp + 3 or mp - 9
  local yr = yoe + era * 400
  if mon <= 2 then yr = yr + 1 end
  local ny, nm = yr, mon + 1
  if nm == 13 then ny, nm = ny + 1, 1 end
  if nm <= 2 then ny = ny - 1 end
  local era2 = floor(ny / 400)
  local yoe2 = ny - era2 * 400
  local mm = nm > 2 and nm - 3 or nm + 9
  local doe2 = yoe2 * 365 + floor(yoe2 / 4) - floor(yoe2 / 100) + floor((153 * mm + 2) / 5)
  wids.M = tostring(yr * 12 + mon - 1)
  left.M = (era2 * 146097 + doe2 - 719468) * 86400 - sec
end
local out = {now}
-- KEYS route a Redis Cluster's calls only: never read.
local nb = tonumber(ARGV[3])
local a = 4 + nb
local sbyte, ssub, format = string.byte, string.sub, string.format

-- A count's field in the current window ('rm' -> 'rm:29942149'), made once per call.
local names = {}
local function named(f)
  local n = names[f]
  if not n then
    local w = ssub(f, 2, 2)
    if w == 'M' and not wids.M then month() end
    n = f .. ':' .. wids[w]
    names[f] = n
  end
  return n
end

-- An amount as Redis reads an integer (a Lua number past 10^14 would go as "1e+14").
local function int(x)
  if x < 1e14 and x > -1e14 then return x end
  return format('%d', x)
end

-- A hash's windows ws[1..n] begin (a count of each began at this charge, or stood at 0, or a
-- settle charges a window the hash has not noted). One HMGET of its window fields; each window
-- w the hash has as another (its field w) drops that window's counts and alert markers, with
-- those of the layouts before (counts without the window's id; the wm layout's window ids
-- 'w' .. w, and its alert markers named like ours, which a hash without the field w still has
-- when it has 'w' .. w); one HSET notes the current windows. When the longest current window
-- the hash holds (of its fields m, h, d, M: windows nest, so a longer one never ends sooner;
-- one no rule counts now may be long past) is one of them, the hash's expiry moves to a minute
-- after its end (or after span s, the longest window the caller's rules count there), so that
-- it never cuts short a window that another check's rules count there; else the expiry set
-- when that window began still holds. A new hash: one HMGET, one HSET, one EXPIRE, whatever the
-- number of its windows; a new minute in a hash that counts a day: one HMGET, one HDEL, one HSET.
local wpos = {m = 1, h = 2, d = 3, M = 4}
local set, del = {}, {}
local function roll_key(key, ws, n, span)
  local f = rcall('HMGET', key, 'm', 'h', 'd', 'M', 'wm', 'wh', 'wd', 'wM')
  if f[4] and not wids.M then month() end
  local nset, ndel = 0, 0
  for k = 1, n do
    local w = ws[k]
    if w == 'M' and not wids.M then month() end
    local p, id = wpos[w], wids[w]
    local was = f[p]
    if was ~= id then
      f[p], set[nset + 1], set[nset + 2], nset = id, w, id, nset + 2
      if was or f[4 + p] then
        local o = ':' .. (was or '')
        for _, x in ipairs({'r' .. w .. o, 't' .. w .. o, 's' .. w .. o, 'ar' .. w, 'at' .. w,
                            'as' .. w, 'Ar' .. w, 'At' .. w, 'As' .. w, 'r' .. w, 't' .. w,
                            's' .. w, 'w' .. w}) do
          ndel = ndel + 1
          del[ndel] = x
        end
      end
    end
  end
  if nset == 0 then return end
  if ndel > 0 then rcall('HDEL', key, unpack(del, 1, ndel)) end
  rcall('HSET', key, unpack(set, 1, nset))
  local x = f[4] == wids.M and 'M' or (f[3] == wids.d and 'd' or (f[2] == wids.h and 'h' or 'm'))
  for q = 1, nset, 2 do
    if set[q] == x then
      if left[x] > span then span = left[x] end
      rcall('EXPIRE', key, span + 60)
      return
    end
  end
end

if ARGV[1] == 's' then
  local one = {}
  for k = 1, nb do
    local base = ARGV[3 + k]
    local rid, tok, sp, cancel = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3] == '1'
    local rk = base .. ':r:' .. rid
    a = a + 4
    local r = rpcall('GET', rk)
    local c, rt, rsp, lines
    if type(r) == 'string' then
      c, rt, rsp, lines = string.match(r, '^(%d+) (%d+) (%d+)\n(.*)$')
    end
    if type(r) == 'table' and r.err then
      out[#out + 1], out[#out + 2] = -1, ''
    elseif r == 'd' then
      out[#out + 1], out[#out + 2] = 1, ''
    elseif not c then
      out[#out + 1], out[#out + 2] = 2, ''
    else
      local delta = {r = 0, t = 0, s = 0}
      if cancel then
        delta.r, delta.t, delta.s = -tonumber(c), -tonumber(rt), -tonumber(rsp)
      else
        if tok ~= '' then delta.t = tonumber(tok) - tonumber(rt) end
        if sp ~= '' then delta.s = tonumber(sp) - tonumber(rsp) end
      end
      -- Per scope: its counts, then its suffix (the first " :"). An older layout's lines
      -- ("field window_id suffix") match no count: those counts are gone.
      local alerts, val = {}, {}
      for counts, suffix in string.gmatch(lines, '([^\n]-) (:[^\n]*)') do
        local key, cur = base .. suffix, {}
        for f in string.gmatch(counts, '%S+') do
          local dim, win, w = string.match(f, '^(%a)(%a):(%d+)$')
          if f == 'cc' then
            rpcall('ZREM', base .. ':c' .. suffix, rid)
          elseif dim then
            if win == 'M' and not wids.M then month() end
            local d = delta[dim]
            -- Only while the window is current. A hash on another window (or none) holds no
            -- count of this one: nothing to give back; an extra charge begins the window there
            -- (a check that charged it 0, an estimate of 0, did not).
            if d and d ~= 0 and w == wids[win] then
              if cur[win] == nil then cur[win] = rpcall('HGET', key, win) end
              if d > 0 and cur[win] ~= w and type(cur[win]) ~= 'table' then
                one[1] = win
                roll_key(key, one, 1, 0)
                cur[win] = w
              end
              local v = cur[win] == w and rpcall('HINCRBY', key, f, int(d))
              if type(v) == 'number' then
                if v < 0 then rcall('HSET', key, f, 0) end
                if d > 0 then val[f] = v end
              end
            end
          end
        end
        -- An extra charge alerts as a check's would: "!a80/1000/td:20793" is a rule on the
        -- count td:20793 (a: its marker; A a shadow rule's) alerting at 80% of 1000.
        for m, pc, lim, f in string.gmatch(counts, '!(%a)(%d+)/(%d+)/(%S+)') do
          local v = val[f]
          if v and v * 100 >= pc * lim and rcall('HSETNX', key, m .. ssub(f, 1, 2), 1) == 1 then
            alerts[#alerts + 1] = m .. ssub(f, 1, 2) .. ' ' .. lim .. ' ' .. pc .. ' ' .. int(v) .. ' ' .. suffix
          end
        end
      end
      rcall('SET', rk, 'd', 'KEEPTTL')
      out[#out + 1] = 0
      out[#out + 1] = table.concat(alerts, '\n')
    end
  end
  return out
end

local ttl = ARGV[2]
-- The heads, read once: scopes (suffix, longest window's seconds left, windows), rules (scope,
-- count, limit, dimension byte, shadow, alert share, an earlier rule of the same count), and
-- the lines of its reservations once made.
local heads, nh = {}, tonumber(ARGV[a])
a = a + 1
for h = 1, nh do
  local a0, ns = tostring(h), tonumber(ARGV[a])
  local sfx, span = {}, {}
  for s = 1, ns do sfx[s], span[s] = ARGV[a + s], 0 end
  a = a + ns + 1
  local nr = tonumber(ARGV[a])
  a = a + 1
  local rs, rc, rn, rw, rl, ls, rd, rsh, ral, same = {}, {}, {}, {}, {}, {}, {}, {}, {}, {}
  for j = 1, nr do
    local s, f = tonumber(ARGV[a]), ARGV[a + 1]
    rs[j], rl[j], rd[j], ls[j] = s, tonumber(ARGV[a + 2]), sbyte(f, 1), ARGV[a + 2]
    rsh[j], ral[j], same[j] = ARGV[a + 3] == '1', tonumber(ARGV[a + 4]), false
    if rd[j] == 99 then
      rc[j], rn[j] = 'cc', 'cc'
    else
      local w = ssub(f, 2, 2)
      rc[j], rn[j], rw[j] = f, named(f), w
      if left[w] > span[s] then span[s] = left[w] end
      for i = 1, j - 1 do
        if rs[i] == s and rc[i] == rc[j] then
          same[j] = i
          break
        end
      end
    end
    a = a + 5
  end
  -- (by its number as the daemon writes it: a user names its head so)
  heads[a0] = {ns = ns, sfx = sfx, span = span, nr = nr, rs = rs, rc = rc, rn = rn, rw = rw,
               rl = rl, ls = ls, rd = rd, rsh = rsh, ral = ral, same = same}
end
-- Per user, reused (tables cost): per scope its key; per rule its
-- use, first charge, what allowed checks spent, whether alerted; per check its amounts and
-- where its arguments are; the rules whose count answered just its charge (fresh), and a
-- scope's windows among them (wl).
local skey, used, charged, spent, alerted = {}, {}, {}, {}, {}
local cr, ct, cs, carg = {}, {}, {}, {}
local fresh, wl = {}, {}

-- The counts of fresh[1..nf] (rules of head hd) began at this charge (or stood at 0): each
-- their window's first, maybe. Each scope hash among them rolls its windows (roll_key) once.
local function roll(hd, nf)
  local rs, rw = hd.rs, hd.rw
  for i = 1, nf do
    local s = fresh[i] and rs[fresh[i]]
    if s then
      local n = 0
      for k = i, nf do
        local j = fresh[k]
        if j and rs[j] == s then
          fresh[k], n = false, n + 1
          wl[n] = rw[j]
        end
      end
      roll_key(skey[s], wl, n, hd.span[s])
    end
  end
end

for k = 1, nb do
  local base, hd = ARGV[3 + k], heads[ARGV[a]] or heads[tostring(tonumber(ARGV[a]))]
  local ns, nr, rs, rc, rn, rl = hd.ns, hd.nr, hd.rs, hd.rc, hd.rn, hd.rl
  local rd, rsh, ral, same = hd.rd, hd.rsh, hd.ral, hd.same
  for s = 1, ns do skey[s] = base .. hd.sfx[s] end
  for j = 1, nr do alerted[j], charged[j], spent[j] = false, 0, 0 end
  -- (tonumber, strtod, costs: the usual numbers are compared)
  local nc = ARGV[a + 1]
  nc = nc == '1' and 1 or tonumber(nc)
  a = a + 2
  local sr, st, ss = 0, 0, 0
  for i = 1, nc do
    local x, y, z = ARGV[a], ARGV[a + 1], ARGV[a + 2]
    x = x == '1' and 1 or tonumber(x)
    y, z = y == '0' and 0 or tonumber(y), z == '0' and 0 or tonumber(z)
    cr[i], ct[i], cs[i], carg[i] = x, y, z, a
    sr, st, ss = sr + x, st + y, ss + z
    a = a + 4
  end
  -- Each count (its field names its window) is charged with what all the user's checks ask,
  -- in one HINCRBY answering the use (less the charge: the use before); a count that answers
  -- just the charge may be a window's first: its scope rolls once all are charged (see roll).
  -- One asked nothing is read (a window not begun reads as nothing: peeks write nothing). A
  -- concurrent rule's slots are counted once lapsed ones are dropped.
  local err, nf = nil, 0
  for j = 1, nr do
    local d = rd[j]
    if err then
      break
    elseif d == 99 then
      local key = base .. ':c' .. hd.sfx[rs[j]]
      local v = rpcall('ZREMRANGEBYSCORE', key, '-inf', now)
      if type(v) == 'table' and v.err then err = v.err end
      v = rpcall('ZCARD', key)
      if type(v) == 'table' and v.err then err = v.err end
      used[j] = tonumber(v) or 0
    elseif same[j] then
      used[j] = used[same[j]]
    else
      local o = d == 114 and 0 or (d == 116 and 1 or 2)
      local x = o == 0 and sr or (o == 1 and st or ss)
      local key = skey[rs[j]]
      if x > 0 then
        -- One check's amount goes as the string it came as.
        local v = rpcall('HINCRBY', key, rn[j], nc > 1 and int(x) or ARGV[carg[1] + o])
        if type(v) == 'table' then
          err = v.err
        else
          charged[j], used[j] = x, v - x
          if v == x then nf, fresh[nf + 1] = nf + 1, j end
        end
      else
        local v = rpcall('HGET', key, rn[j])
        if type(v) == 'table' then
          err = v.err
        else
          used[j] = tonumber(v) or 0
          if v and not tonumber(v) then err = 'the count ' .. rc[j] .. ' of ' .. key .. ' is not a number' end
        end
      end
    end
  end
  -- Even when an error stops the check: a hash made here gets its expiry.
  if nf > 0 then roll(hd, nf) end
  if err then
    for j = 1, nr do
      if charged[j] > 0 then rcall('HINCRBY', skey[rs[j]], rn[j], int(-charged[j])) end
    end
    for i = 1, nc do
      out[#out + 1] = -1
      out[#out + 1] = err
      for j = 2, nr do out[#out + 1] = 0 end
      out[#out + 1] = ''
    end
  else
    for i = 1, nc do
      local xr, xt, xs = cr[i], ct[i], cs[i]
      local peek = xr == 0 and xt == 0 and xs == 0
      local deny, alerts = false, nil
      for j = 1, nr do
        local d = rd[j]
        local x = d == 114 and xr or (d == 116 and xt or (d == 99 and 1 or xs))
        local u, lim = used[j], rl[j]
        if rsh[j] then
          -- a shadow rule: never denies
        elseif peek then
          if u > lim then deny = true end
        elseif u + x > lim or (x == 0 and u >= lim) then
          deny = true
        end
      end
      local rid = ARGV[carg[i] + 3]
      if not deny and not peek then
        for j = 1, nr do
          local d = rd[j]
          if d == 99 then
            if rid ~= '' then
              local key = base .. ':c' .. hd.sfx[rs[j]]
              used[j] = used[j] + rcall('ZADD', key, now + ttl * 1000, rid) -- 1: new
              rcall('PEXPIRE', key, ttl * 1000 + 60000)
            end
          else
            local x = d == 114 and xr or (d == 116 and xt or xs)
            if x ~= 0 then
              used[j], spent[j] = used[j] + x, spent[j] + x
              if ral[j] > 0 and not alerted[j] and used[j] * 100 >= ral[j] * rl[j] then
                alerted[j] = true
                if rcall('HSETNX', skey[rs[j]], (rsh[j] and 'A' or 'a') .. rc[j], 1) == 1 then
                  alerts = alerts and alerts .. ',' .. j or tostring(j)
                end
              end
            end
          end
        end
        if rid ~= '' then
          if not hd.resv then
            -- Per scope, each count once, and the rules alerting on them (see 's').
            local lines = {}
            for s = 1, ns do
              local line = nil
              for j = 1, nr do
                if rs[j] == s then
                  local n = rn[j]
                  local f = not same[j] and n
                  if ral[j] > 0 and rd[j] ~= 99 then
                    f = (f and f .. ' ' or '') .. '!' .. (rsh[j] and 'A' or 'a') .. ral[j] .. '/' .. hd.ls[j] .. '/' .. n
                  end
                  if f then line = (line and line .. ' ' or '') .. f end
                end
              end
              if line then lines[#lines + 1] = line .. ' ' .. hd.sfx[s] end
            end
            hd.resv = table.concat(lines, '\n')
          end
          local c = carg[i]
          rcall('SET', base .. ':r:' .. rid,
                     ARGV[c] .. ' ' .. ARGV[c + 1] .. ' ' .. ARGV[c + 2] .. '\n' .. hd.resv,
                     'EX', ttl)
        end
      end
      local o = #out
      out[o + 1] = deny and 1 or 0
      for j = 1, nr do out[o + 1 + j] = used[j] end
      out[o + 2 + nr] = alerts or ''
    end
    -- What the denied checks had been charged goes back.
    for j = 1, nr do
      if rd[j] ~= 99 and not same[j] and charged[j] ~= spent[j] then
        rcall('HINCRBY', skey[rs[j]], rn[j], int(spent[j] - charged[j]))
      end
    end
  end
end
return out
