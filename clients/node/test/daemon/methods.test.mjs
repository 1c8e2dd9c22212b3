// Every method of usaged-client against the real daemon, PostgreSQL and Redis.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { rateLimitHeaders, UsagedError } from "../../dist/esm/index.js";
import { client, count, env, newUser, sql, waitFor } from "./env.mjs";

let u;
before(async () => { u = await client(); });
after(async () => { await u.close(); });

test("ping answers with the daemon's version and protocol 1", async () => {
  const p = await u.ping();
  assert.equal(p.protocol, 1);
  assert.equal(typeof p.version, "string");
  assert.ok(p.uptimeMs >= 0);
});

/** Waits, when the current minute window has less than 3 s left, for the next one. */
async function freshMinute(user) {
  const peek = await u.check({ userId: user, provider: "tiny", cost: 0 });
  if (peek.resetMinuteMs < 3000) await new Promise((r) => setTimeout(r, peek.resetMinuteMs + 50));
}

test("check allows within the limit, then denies with a reason, retryAfterMs and headers", async () => {
  const user = newUser();
  await freshMinute(user);
  const rs = [];
  for (let i = 0; i < 4; i++) rs.push(await u.check({ userId: user, provider: "tiny" }));
  assert.deepEqual(rs.map((r) => r.allowed), [true, true, true, false]);
  const [first, , , denied] = rs;
  assert.equal(first.reason, null);
  assert.equal(first.retryAfterMs, 0);
  assert.equal(first.limitMinute, 3);
  assert.equal(first.limitDay, 1000);
  assert.equal(first.remainingMinute, 2);
  assert.equal(first.remainingDay, 999);
  assert.equal(first.degraded, false);
  assert.ok(first.resetMinuteMs > 0 && first.resetMinuteMs <= 60000);
  assert.ok(first.resetDayMs > 0 && first.resetDayMs <= 86400000);
  assert.deepEqual(first.limits.map(({ resetMs, ...l }) => l), [
    { dimension: "requests", window: "minute", scope: "provider", limit: 3, used: 1, remaining: 2 },
    { dimension: "requests", window: "day", scope: "provider", limit: 1000, used: 1, remaining: 999 },
  ]);
  assert.equal(first.limits[0].resetMs, first.resetMinuteMs);
  assert.equal(first.reservation, null);
  assert.equal(first.deniedBy, null);
  assert.equal(denied.reason, "minute_limit");
  assert.equal(denied.remainingMinute, 0);
  assert.ok(denied.retryAfterMs > 0 && denied.retryAfterMs <= 60000);
  assert.deepEqual(rateLimitHeaders(first), {
    "RateLimit-Limit": "3", "RateLimit-Remaining": "2", "RateLimit-Reset": String(Math.ceil(first.resetMinuteMs / 1000)),
  });
  const h = rateLimitHeaders(denied);
  assert.equal(h["RateLimit-Limit"], "3");
  assert.equal(h["RateLimit-Remaining"], "0");
  assert.equal(h["Retry-After"], String(Math.ceil(denied.retryAfterMs / 1000)));
});

test("check with cost 0 is a peek", async () => {
  const user = newUser();
  await freshMinute(user);
  const a = await u.check({ userId: user, provider: "tiny", cost: 0 });
  const b = await u.check({ userId: user, provider: "tiny", cost: 0 });
  assert.equal(a.allowed, true);
  assert.equal(b.remainingMinute, 3);
});

test("logUsage with a durable ack stores every event, with the UUIDv7 ids the client gave", async () => {
  const when = new Date(Date.now() - 3600_000);
  const r = await u.logUsage([
    { userId: env.user, provider: "openai", endpoint: "methods-durable", statusCode: 200, requestSize: 10, responseSize: 20, responseTimeMs: 30 },
    { userId: env.user, provider: "openai", endpoint: "methods-durable", statusCode: 500, errorMessage: "boom", createdAt: when },
  ], { ack: "durable" });
  assert.equal(r.accepted, 2);
  const rows = sql("SELECT id, status_code, request_size, response_time_ms, error_message, (extract(epoch from created_at) * 1000)::bigint " +
    "FROM public.api_usage_logs WHERE endpoint = 'methods-durable' ORDER BY status_code");
  assert.equal(rows.length, 2);
  assert.deepEqual(rows.map((x) => x[0]), r.ids);
  for (const id of r.ids) assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7/);
  assert.deepEqual(rows[0].slice(1, 4), ["200", "10", "30"]);
  assert.equal(rows[1][4], "boom");
  assert.equal(Number(rows[1][5]), when.getTime(), "a Date goes as a timestamp to the millisecond");
});

test("a log request sent again after a lost ack is stored once (same ids)", async () => {
  const events = [{ userId: env.user, provider: "openai", endpoint: "methods-retry" }];
  const first = await u.logUsage(events, { ack: "durable" });
  // The ack was lost: the caller sends the same events again, now with the ids they were given.
  const again = events.map((e, i) => ({ ...e, id: first.ids[i] }));
  assert.equal((await u.logUsage(again, { ack: "durable" })).accepted, 1);
  await u.logUsage(again, { ack: "durable" });
  assert.equal(count("SELECT count(*) FROM public.api_usage_logs WHERE endpoint = 'methods-retry'"), 1);
});

test("logPrompt stores prompts with decimal cost and the daemon's queued ack", async () => {
  const r = await u.logPrompt([
    { userId: env.user, provider: "openai", model: "gpt-4o", frameworkId: "methods-prompt", status: "completed", tokensUsed: 750, costUsd: 0.0035, temperature: 0.7, vibeCoding: true },
    { userId: env.user, frameworkId: "methods-prompt", status: "failed", costUsd: "1.25", errorCode: "E1" },
  ], { ack: "queued" });
  assert.equal(r.accepted, 2);
  await waitFor(() => count("SELECT count(*) FROM public.prompt_history WHERE framework_id = 'methods-prompt'") === 2, "2 prompt rows");
  const rows = sql("SELECT id, cost_usd, tokens_used, vibe_coding FROM public.prompt_history WHERE framework_id = 'methods-prompt' ORDER BY status");
  assert.deepEqual(rows.map((x) => x[0]).sort(), [...r.ids].sort());
  assert.deepEqual(rows[0].slice(1), ["0.0035", "750", "t"]);
  assert.equal(Number(rows[1][1]), 1.25);
});

test("NoWait log calls reach PostgreSQL, flushed by close()", async () => {
  const c = await client();
  const ids = c.logUsageNoWait(Array.from({ length: 100 }, (_, i) => ({ userId: env.user, provider: "openai", endpoint: "methods-nowait", statusCode: 200 + i })));
  const pids = c.logPromptNoWait([{ userId: env.user, frameworkId: "methods-nowait", status: "pending" }]);
  await c.close();
  await waitFor(() => count("SELECT count(*) FROM public.api_usage_logs WHERE endpoint = 'methods-nowait'") === 100, "100 rows");
  await waitFor(() => count(`SELECT count(*) FROM public.prompt_history WHERE id = '${pids[0]}'`) === 1, "the prompt row");
  assert.equal(count(`SELECT count(*) FROM public.api_usage_logs WHERE id = ANY('{${ids.join(",")}}'::uuid[])`), 100);
});

test("stats gives the daemon's counters as it names them", async () => {
  const s = await u.stats();
  assert.equal(typeof s.connections, "object");
  assert.ok(s.messages);
  assert.ok(s.limits && typeof s.limits.checks === "number");
});

test("request() sends any method with raw params and gives the raw answer", async () => {
  const r = await u.request("ping", []);
  assert.equal(r.protocol, 1);
  assert.ok("uptime_ms" in r);
});

test("the CommonJS build works the same", async () => {
  const cjs = createRequire(import.meta.url)("../../dist/cjs/index.js");
  const c = await cjs.connect({ path: env.socket, token: env.token });
  try {
    assert.equal((await c.ping()).protocol, 1);
    await assert.rejects(c.check({ userId: "x", provider: "tiny" }), (e) => e instanceof cjs.UsagedError && e.code === "invalid_field");
  } finally {
    await c.close();
  }
  assert.notEqual(cjs.UsagedError, UsagedError, "two builds, two classes: instanceof holds within each");
});

test("the example middleware checks, answers 429 with Retry-After when denied, and logs the call", async () => {
  const { createApp } = await import("../../examples/middleware.mjs");
  const user = newUser();
  const server = createApp(u, { provider: "tiny" }).listen(0, "127.0.0.1");
  await new Promise((r) => server.once("listening", r));
  const url = `http://127.0.0.1:${server.address().port}/generate`;
  try {
    await freshMinute(user);
    const statuses = [];
    let last;
    for (let i = 0; i < 4; i++) {
      last = await fetch(url, { headers: { "x-user-id": user } });
      statuses.push(last.status);
      await last.text();
    }
    assert.deepEqual(statuses, [200, 200, 200, 429]);
    assert.equal(last.headers.get("ratelimit-limit"), "3");
    assert.equal(last.headers.get("ratelimit-remaining"), "0");
    assert.ok(Number(last.headers.get("retry-after")) >= 1);
    const bad = await fetch(url, { headers: { "x-user-id": "nobody" } });
    assert.equal(bad.status, 400);
    await waitFor(() => count(`SELECT count(*) FROM public.api_usage_logs WHERE user_id = '${user}' AND endpoint = '/generate' AND status_code = 200`) === 3, "the 3 calls' rows");
  } finally {
    await new Promise((r) => server.close(r));
  }
});
