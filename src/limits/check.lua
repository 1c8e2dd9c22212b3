-- check.lua: the limiter's one script, for checks (ARGV[1] = 'c') and settles ('s'), many of
-- them per call (src/limits/limiter.c sends it; scripts/embed_text.py embeds it at build time).
--
-- Layout (PROTOCOL.md, budgets): every key of a user shares the hash tag of the user's base
-- "prefix{user_id}" (ARGV[3 + k] for user k: see below). A counting scope (a user, with the
-- provider and/or model a rule names) is one hash, base .. suffix, holding for each window w (m
-- minute, h hour, d day, M month) the field 'w'..w = the window's id and a count per dimension d
-- (r requests, t tokens, s spend in micro-dollars) in the field d..w. One read and one write per
-- scope, whatever the number of rules; the hash expires a minute after the end of the longest
-- window counted in it. A window whose id has moved on counts from 0. A reservation is the string
-- base .. ':r:' .. id, made with its expiry (ARGV[2] seconds) in one SET: a first line "cost
-- tokens spend" (what its check charged), then per charged field a line "field window_id suffix";
-- once settled it is "d", with the expiry it had.
--
-- A concurrent rule (field 'cc') counts calls in flight instead: a sorted set base .. suffix ..
-- ':c' whose members are the reservations holding a slot, scored by when the slot lapses (now +
-- the reservation TTL, in ms). A slot is taken by an allowed check that is not a peek, given
-- back by settling the reservation (a line "cc 0 suffix" in it), and a lapsed one is dropped by
-- the next check that reads the set: a daemon that dies leaks no slot past the TTL.
--
-- A shadow rule (its flag '1') is counted and charged like the others but never denies: the
-- daemon reports when it would have.
--
-- A rule with an alert share P (1..100, '0' none) is alerted by the first check in a window that
-- charges it and leaves its use at P% of its limit or more: the scope's field 'a' .. field (a
-- shadow rule's: 'A' .. field) records the window's id, so that it happens once per user, rule
-- and window whatever the number of daemons; the check's answer says which rules it alerted.
--
-- Windows come from Redis's TIME, UTC: minutes, hours and days since the epoch, and months
-- (year * 12 + month - 1) of the proleptic Gregorian calendar.
--
-- 'c': for each user k: ns, the ns scope suffixes; nr, per counted rule: its scope's index,
-- its field (dimension .. window, or 'cc'), its limit, '1' for a shadow rule, its alert share;
-- nc, per check: cost, tokens, spend, reservation
-- id ('' for none). Checks are applied in order, atomically over every rule: allowed only if
-- every rule has room (used + amount <= limit, and no rule already at its limit when the amount
-- is 0, unless the check is a peek: all amounts 0, refused only past a limit), then all are
-- charged; denied, nothing changes. Returns {now_ms, then per check: 0 allowed or 1 denied,
-- each rule's use after it, and the rules it alerted ('' or their numbers, "2,5")}; a scope that
-- cannot be counted (a key of another type, or a count that is not a number: written by someone
-- else) answers -1 and the error for every check of its user, and changes nothing there.
-- 's': for each user k: reservation id, tokens and spend used ('' keeps the estimate), '1' to
-- cancel. The difference goes to every field the check charged whose window is still the
-- current one (cancel gives back all, requests included); counts stop at 0. Returns {now_ms,
-- then per settle: 0 settled, 1 already settled, 2 unknown, -1 not a reservation}.
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local floor = math.floor
local day = floor(sec / 86400)
local wids = {m = tostring(floor(sec / 60)), h = tostring(floor(sec / 3600)), d = tostring(day)}
local left = {m = 60 - sec % 60, h = 3600 - sec % 3600, d = 86400 - sec % 86400}
-- The calendar month (H. Hinnant's civil_from_days and days_from_civil), only when a rule
-- counts by month: most calls need none of it.
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
-- ARGV[3] is the number of users nb, ARGV[4 .. 3 + nb] their bases; the per-user arguments
-- above follow them. KEYS themselves are for routing only and the script never reads them:
-- on one Redis the daemon declares none; on a Redis Cluster, every existing key a check will
-- touch (its scopes' hashes) and the reservations it makes or a settle reads. A slot being
-- migrated is routed by the declared keys alone: a base (which never exists) declared, or a
-- touched key left out, would send calls to the importing node before the counts are there.
local nb = tonumber(ARGV[3])
local a = 4 + nb

if ARGV[1] == 's' then
  for k = 1, nb do
    local base = ARGV[3 + k]
    local tok, sp, cancel = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3] == '1'
    local rk = base .. ':r:' .. ARGV[a]
    a = a + 4
    local r = redis.pcall('GET', rk)
    local c, rt, rsp, lines
    if type(r) == 'string' then
      c, rt, rsp, lines = string.match(r, '^(%d+) (%d+) (%d+)\n(.*)$')
    end
    if type(r) == 'table' and r.err then
      out[#out + 1] = -1
    elseif r == 'd' then
      out[#out + 1] = 1
    elseif not c then
      out[#out + 1] = 2
    else
      local delta = {r = 0, t = 0, s = 0}
      if cancel then
        delta.r, delta.t, delta.s = -tonumber(c), -tonumber(rt), -tonumber(rsp)
      else
        if tok ~= '' then delta.t = tonumber(tok) - tonumber(rt) end
        if sp ~= '' then delta.s = tonumber(sp) - tonumber(rsp) end
      end
      for line in string.gmatch(lines, '[^\n]+') do
        local f, w, suffix = string.match(line, '^(%S+) (%S+) (.*)$')
        local win = string.sub(f, 2, 2)
        if f == 'cc' then redis.pcall('ZREM', base .. suffix .. ':c', ARGV[a - 4]) end
        if win == 'M' and not wids.M then month() end
        local d = delta[string.sub(f, 1, 1)]
        if d and d ~= 0 and w == wids[win] then
          local key = base .. suffix
          local cur = redis.pcall('HMGET', key, 'w' .. win, f)
          if not cur.err and cur[1] == w then
            local v = (tonumber(cur[2]) or 0) + d
            if v < 0 then v = 0 end
            redis.call('HSET', key, f, v)
          end
        end
      end
      redis.call('SET', rk, 'd', 'KEEPTTL')
      out[#out + 1] = 0
    end
  end
  return out
end

local ttl = ARGV[2]
local sbyte, ssub = string.byte, string.sub
-- Tables reused from key to key (a table per key and rule was most of the script's cost):
-- per scope its suffix and flags, per rule its scope, field, limit, dimension (byte), window,
-- use, shadow flag, alert share, alert marker field and whether it was alerted in this window;
-- buf holds a command's arguments.
local sfx, changed, rolled, existed = {}, {}, {}, {}
local rs, rf, rl, rd, rw, used, buf = {}, {}, {}, {}, {}, {}, {}
local rsh, ral, mark, alerted = {}, {}, {}, {}
for k = 1, nb do
  local base = ARGV[3 + k]
  local ns = tonumber(ARGV[a])
  for s = 1, ns do
    sfx[s] = ARGV[a + s]
    changed[s], rolled[s], existed[s] = false, false, false
  end
  a = a + ns + 1
  local nr = tonumber(ARGV[a])
  a = a + 1
  for j = 1, nr do
    local f = ARGV[a + 1]
    rs[j], rf[j], rl[j] = tonumber(ARGV[a]), f, tonumber(ARGV[a + 2])
    rd[j], rw[j], rsh[j] = sbyte(f, 1), ssub(f, 2, 2), ARGV[a + 3] == '1'
    ral[j] = tonumber(ARGV[a + 4])
    mark[j] = ral[j] > 0 and rd[j] ~= 99 and (rsh[j] and 'A' or 'a') .. f
    alerted[j] = false
    if rw[j] == 'M' and not wids.M then month() end
    a = a + 5
  end
  -- One read per scope: each of its rules' window id, count and alert marker; the slots in use
  -- of its concurrent rules, once lapsed ones are dropped.
  local err = nil
  for s = 1, ns do
    local n = 0
    for j = 1, nr do
      if rs[j] == s then
        if rd[j] == 99 then
          local key = base .. sfx[s] .. ':c'
          local v = redis.pcall('ZREMRANGEBYSCORE', key, '-inf', now)
          if type(v) == 'table' and v.err then err = v.err end
          v = redis.pcall('ZCARD', key)
          if type(v) == 'table' and v.err then err = v.err end
          used[j] = tonumber(v) or 0
        else
          buf[n + 1], buf[n + 2], buf[n + 3] = 'w' .. rw[j], rf[j], mark[j] or rf[j]
          n = n + 3
        end
      end
    end
    local v = n > 0 and redis.pcall('HMGET', base .. sfx[s], unpack(buf, 1, n)) or {}
    if v.err then
      err = v.err
    else
      local i = 1
      for j = 1, nr do
        if rs[j] == s and rd[j] ~= 99 then
          local w = v[i]
          if w then existed[s] = true end
          if w ~= wids[rw[j]] then
            used[j] = 0 -- a new window counts from 0
            rolled[s] = true
          else
            used[j] = tonumber(v[i + 1] or 0)
            if not used[j] then
              err = 'the count ' .. rf[j] .. ' of ' .. base .. sfx[s] .. ' is not a number'
              used[j] = 0
            end
          end
          alerted[j] = mark[j] and v[i + 2] == wids[rw[j]]
          i = i + 3
        end
      end
    end
  end
  local nc = tonumber(ARGV[a])
  a = a + 1
  for i = 1, nc do
    local cr, ct, cs = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    local rid = ARGV[a + 3]
    a = a + 4
    if err then
      out[#out + 1] = -1
      out[#out + 1] = err
      for j = 2, nr do out[#out + 1] = 0 end
      out[#out + 1] = ''
    else
      local peek = cr == 0 and ct == 0 and cs == 0
      local deny, alerts = false, nil
      for j = 1, nr do
        local d = rd[j]
        local x = d == 114 and cr or (d == 116 and ct or (d == 99 and 1 or cs))
        local u, lim = used[j], rl[j]
        if rsh[j] then
          -- a shadow rule: never denies
        elseif peek then
          if u > lim then deny = true end
        elseif u + x > lim or (x == 0 and u >= lim) then
          deny = true
        end
      end
      if not deny and not peek then
        for j = 1, nr do
          local d = rd[j]
          if d == 99 then
            if rid ~= '' then
              local key = base .. sfx[rs[j]] .. ':c'
              redis.call('ZADD', key, now + ttl * 1000, rid)
              redis.call('PEXPIRE', key, ttl * 1000 + 60000)
              used[j] = redis.call('ZCARD', key)
            end
          else
            local x = d == 114 and cr or (d == 116 and ct or cs)
            if x ~= 0 then
              used[j] = used[j] + x
              changed[rs[j]] = true
              if mark[j] and not alerted[j] and used[j] * 100 >= ral[j] * rl[j] then
                alerted[j] = true
                redis.call('HSET', base .. sfx[rs[j]], mark[j], wids[rw[j]])
                alerts = alerts and alerts .. ',' .. j or tostring(j)
              end
            end
          end
        end
        if rid ~= '' then
          -- One line per field and scope: a shadow rule and an enforced one may count the same.
          local parts, seen = {ARGV[a - 4] .. ' ' .. ARGV[a - 3] .. ' ' .. ARGV[a - 2]}, {}
          for j = 1, nr do
            local line = rf[j] .. ' ' .. (wids[rw[j]] or '0') .. ' ' .. sfx[rs[j]]
            if not seen[line] then
              seen[line] = true
              parts[#parts + 1] = line
            end
          end
          redis.call('SET', base .. ':r:' .. rid, table.concat(parts, '\n'), 'EX', ttl)
        end
      end
      local o = #out
      out[o + 1] = deny and 1 or 0
      for j = 1, nr do out[o + 1 + j] = used[j] end
      out[o + 2 + nr] = alerts or ''
    end
  end
  if not err then
    -- One write per scope that changed: its rules' window ids and counts. A window that rolled
    -- over also drops the counts of dimensions no rule counts any more (so that a rule added
    -- later does not read an old window's count), and sets the expiry.
    for s = 1, ns do
      if changed[s] or rolled[s] then
        local key, n, e = base .. sfx[s], 0, 0
        for j = 1, nr do
          if rs[j] == s and rd[j] ~= 99 then
            local w = rw[j]
            buf[n + 1], buf[n + 2], buf[n + 3], buf[n + 4] = 'w' .. w, wids[w], rf[j], used[j]
            n = n + 4
            if left[w] > e then e = left[w] end
          end
        end
        redis.call('HSET', key, unpack(buf, 1, n))
        if rolled[s] and existed[s] then
          local stale = {}
          for j = 1, nr do
            if rs[j] == s and rd[j] ~= 99 then
              stale['r' .. rw[j]], stale['t' .. rw[j]], stale['s' .. rw[j]] = true, true, true
            end
          end
          for j = 1, nr do
            if rs[j] == s then stale[rf[j]] = nil end
          end
          local drop = {}
          for f, _ in pairs(stale) do drop[#drop + 1] = f end
          if #drop > 0 then redis.call('HDEL', key, unpack(drop)) end
        end
        if rolled[s] then redis.call('EXPIRE', key, e + 60) end
      end
    end
  end
end
return out
