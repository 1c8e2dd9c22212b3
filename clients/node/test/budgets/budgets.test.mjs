// Protocol 1's budget additions through usaged-client against the real daemon: check's model,
// tokens and spend, reservations, settle, usage, and log_prompt's reservation. Run by
// tests/integration/test_node_budgets.py, which is not wired into tests/meson.build until the
// daemon has these methods. The rules it configures:
//   { provider: bulk, model: gpt-4o, tokens_per_minute: 10000, spend_per_day: "1", concurrent: 2 }
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { UsagedError, rateLimitHeaders } from "../../dist/esm/index.js";
import { client, env, newUser } from "../daemon/env.mjs";

let u;
before(async () => { u = await client(); });
after(async () => { await u.close(); });

const gpt = (user, o = {}) => ({ userId: user, provider: "bulk", model: "gpt-4o", ...o });
const rule = (r, dimension) => r.limits.find((l) => l.dimension === dimension);

test("a check with tokens and spend charges the rules, reports them, and gives a reservation", async () => {
  const user = newUser();
  const r = await u.check(gpt(user, { tokens: 800, spend: 0.002 }));
  assert.equal(r.allowed, true);
  assert.equal(typeof r.reservation, "string");
  assert.deepEqual(rule(r, "tokens"), { dimension: "tokens", window: "minute", scope: "model", limit: 10000, used: 800, remaining: 9200, resetMs: rule(r, "tokens").resetMs });
  const spend = rule(r, "spend");
  assert.deepEqual([spend.window, spend.limit, spend.used, spend.remaining], ["day", "1.000000", "0.002000", "0.998000"]);
  assert.equal(rule(r, "concurrent").used, 1);
  assert.equal(r.deniedBy, null);
});

test("settle gives back the difference, and a second settle is a duplicate", async () => {
  const user = newUser();
  const r = await u.check(gpt(user, { tokens: 1000, spend: "0.01" }));
  assert.deepEqual(await u.settle({ reservation: r.reservation, tokens: 400, spend: 0.004 }), { settled: true, duplicate: false });
  assert.deepEqual(await u.settle({ reservation: r.reservation, tokens: 400, spend: 0.004 }), { settled: true, duplicate: true });
  const after = await u.usage({ userId: user, provider: "bulk", model: "gpt-4o" });
  assert.equal(rule(after, "tokens").used, 400);
  assert.equal(rule(after, "spend").used, "0.004000");
  assert.equal(rule(after, "concurrent").used, 0, "settle frees the slot");
});

test("settle with cancel gives everything back", async () => {
  const user = newUser();
  const r = await u.check(gpt(user, { tokens: 500, spend: "0.5" }));
  assert.deepEqual(await u.settle({ reservation: r.reservation, cancel: true }), { settled: true, duplicate: false });
  const after = await u.usage({ userId: user });
  assert.equal(rule(after, "tokens").used, 0);
  assert.equal(rule(after, "spend").used, "0.000000");
});

test("a spend budget denies with its rule, and the headers name it", async () => {
  const user = newUser();
  const a = await u.check(gpt(user, { spend: "0.9" }));
  assert.equal(a.allowed, true);
  const d = await u.check(gpt(user, { spend: "0.2" }));
  assert.equal(d.allowed, false);
  assert.equal(d.reason, "day_limit");
  assert.equal(d.deniedBy.dimension, "spend");
  assert.equal(d.reservation, null);
  const h = rateLimitHeaders(d);
  assert.equal(h["RateLimit-Limit"], "1.000000");
  assert.ok(Number(h["Retry-After"]) > 0);
});

test("concurrent: a third call in flight is denied until one is settled", async () => {
  const user = newUser();
  const a = await u.check(gpt(user));
  const b = await u.check(gpt(user));
  const c = await u.check(gpt(user));
  assert.deepEqual([a.allowed, b.allowed, c.allowed], [true, true, false]);
  assert.equal(c.reason, "concurrency_limit");
  await u.settle({ reservation: a.reservation, tokens: 0 });
  assert.equal((await u.check(gpt(user))).allowed, true);
});

test("unknown_reservation for a reservation the daemon never gave", async () => {
  await assert.rejects(u.settle({ reservation: "no-such-reservation" }), (e) => e instanceof UsagedError && e.code === "unknown_reservation");
});

test("logPrompt with a reservation settles it with tokensUsed and costUsd", async () => {
  const user = newUser();
  const r = await u.check(gpt(user, { tokens: 1000, spend: "0.01" }));
  await u.logPrompt([{ userId: env.user, provider: "bulk", model: "gpt-4o", status: "completed", tokensUsed: 250, costUsd: 0.0025, reservation: r.reservation }], { ack: "durable" });
  let used;
  const deadline = Date.now() + 10000;
  do {
    used = rule(await u.usage({ userId: user }), "tokens").used;
  } while (used !== 250 && Date.now() < deadline && (await new Promise((ok) => setTimeout(ok, 20, true))));
  assert.equal(used, 250);
  assert.deepEqual(await u.settle({ reservation: r.reservation, tokens: 250 }), { settled: true, duplicate: true });
});
