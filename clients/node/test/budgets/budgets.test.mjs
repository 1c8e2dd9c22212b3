// Protocol 1's budget additions that the daemon has, through usaged-client: check's model,
// tokens and spend, the rules it reports, reservations, settle, and log_prompt's reservation.
// Run by tests/integration/test_node_client.py with the rule
//   { provider: bulk, model: gpt-4o, tokens_per_minute: 10000, spend_per_day: "1" }
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { UsagedError, rateLimitHeaders } from "../../dist/esm/index.js";
import { client, env, newUser, waitFor } from "../daemon/env.mjs";

let u;
before(async () => { u = await client(); });
after(async () => { await u.close(); });

const gpt = (user, o = {}) => ({ userId: user, provider: "bulk", model: "gpt-4o", ...o });
const rule = (r, dimension) => r.limits.find((l) => l.dimension === dimension);
/** What a check of nothing (a peek) reports of the user's rules. */
const peek = (user) => u.check(gpt(user, { cost: 0 }));

test("a check with tokens and spend charges the rules, reports them, and gives a reservation", async () => {
  const user = newUser();
  const r = await u.check(gpt(user, { tokens: 800, spend: 0.002 }));
  assert.equal(r.allowed, true);
  assert.match(r.reservation, /^[0-9a-f-]{36}\.[0-9a-f]{16}$/);
  const tokens = rule(r, "tokens");
  assert.deepEqual(tokens, { dimension: "tokens", window: "minute", scope: "model", limit: 10000, used: 800, remaining: 9200, resetMs: tokens.resetMs });
  assert.ok(tokens.resetMs > 0 && tokens.resetMs <= 60000);
  const spend = rule(r, "spend");
  assert.deepEqual([spend.window, spend.scope, spend.limit, spend.used, spend.remaining], ["day", "model", "1.000000", "0.002000", "0.998000"]);
  assert.equal(r.deniedBy, null);
});

test("settle gives back the difference, and a second settle is a duplicate", async () => {
  const user = newUser();
  const r = await u.check(gpt(user, { tokens: 1000, spend: "0.01" }));
  assert.deepEqual(await u.settle({ reservation: r.reservation, tokens: 400, spend: 0.004 }), { settled: true, duplicate: false });
  assert.deepEqual(await u.settle({ reservation: r.reservation, tokens: 400, spend: 0.004 }), { settled: true, duplicate: true });
  const after = await peek(user);
  assert.equal(rule(after, "tokens").used, 400);
  assert.equal(rule(after, "spend").used, "0.004000");
});

test("settle with cancel gives everything back", async () => {
  const user = newUser();
  const r = await u.check(gpt(user, { tokens: 500, spend: "0.5" }));
  assert.deepEqual(await u.settle({ reservation: r.reservation, cancel: true }), { settled: true, duplicate: false });
  const after = await peek(user);
  assert.equal(rule(after, "tokens").used, 0);
  assert.equal(rule(after, "spend").used, "0.000000");
});

test("a spend budget denies with its rule, and the headers name it", async () => {
  const user = newUser();
  assert.equal((await u.check(gpt(user, { spend: "0.9" }))).allowed, true);
  const d = await u.check(gpt(user, { spend: "0.2" }));
  assert.equal(d.allowed, false);
  assert.equal(d.reason, "day_limit");
  assert.equal(d.deniedBy.dimension, "spend");
  assert.equal(d.deniedBy.remaining, "0.100000");
  assert.equal(d.reservation, null);
  const h = rateLimitHeaders(d);
  assert.equal(h["RateLimit-Limit"], "1.000000");
  assert.equal(h["RateLimit-Remaining"], "0.100000");
  assert.equal(h["Retry-After"], String(Math.ceil(d.retryAfterMs / 1000)));
});

test("a spend with more than 6 decimal places is invalid_field naming spend", async () => {
  await assert.rejects(u.check(gpt(newUser(), { spend: 0.0000001 })), (e) => e instanceof UsagedError && e.code === "invalid_field" && e.field === "spend");
});

test("unknown_reservation for a reservation the daemon never gave", async () => {
  await assert.rejects(u.settle({ reservation: `${randomUUID()}.0123456789abcdef` }), (e) => e instanceof UsagedError && e.code === "unknown_reservation");
});

test("logPrompt with a reservation settles it with tokensUsed and costUsd", async () => {
  const user = newUser();
  const r = await u.check(gpt(user, { tokens: 1000, spend: "0.01" }));
  await u.logPrompt([{ userId: env.user, provider: "bulk", model: "gpt-4o", status: "completed", tokensUsed: 250, costUsd: 0.0025, reservation: r.reservation }], { ack: "durable" });
  await waitFor(async () => rule(await peek(user), "tokens").used === 250, "the reservation settled at 250 tokens");
  assert.equal(rule(await peek(user), "spend").used, "0.002500");
  assert.deepEqual(await u.settle({ reservation: r.reservation, tokens: 250 }), { settled: true, duplicate: true });
});
