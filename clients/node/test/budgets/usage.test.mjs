// The budget additions of issue 15 through the client: `usage` and `concurrent` rules. Run by
// tests/integration/test_node_budgets.py. The rule it configures:
//   { provider: bulk, model: gpt-4o, tokens_per_minute: 10000, spend_per_day: "1", concurrent: 2 }
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { client, newUser } from "../daemon/env.mjs";

let u;
before(async () => { u = await client(); });
after(async () => { await u.close(); });

const gpt = (user, o = {}) => ({ userId: user, provider: "bulk", model: "gpt-4o", ...o });
const rule = (r, dimension) => r.limits.find((l) => l.dimension === dimension);

test("usage reports every rule of a user without spending", async () => {
  const user = newUser();
  const r = await u.check(gpt(user, { tokens: 300, spend: "0.3" }));
  const standing = (x) => x.limits.map((l) => [l.provider, l.model, l.dimension, l.window, l.used]);
  const a = await u.usage({ userId: user, provider: "bulk", model: "gpt-4o" });
  const again = await u.usage({ userId: user, provider: "bulk", model: "gpt-4o" });
  assert.deepEqual(standing(again), standing(a), "usage spends nothing");
  assert.equal(a.degraded, false, "Redis is up");
  assert.equal(a.truncated, false, "a handful of providers and models");
  assert.equal(rule(a, "tokens").used, 300);
  assert.equal(rule(a, "spend").used, "0.300000");
  // Unnarrowed, the user's standing covers every provider's rules, the bulk model's among them.
  const all = await u.usage({ userId: user });
  const tokens = all.limits.find((l) => l.dimension === "tokens" && l.provider === "bulk"
                                        && l.model === "gpt-4o");
  assert.equal(tokens.used, 300);
  await u.settle({ reservation: r.reservation, cancel: true });
});

test("concurrent: a third call in flight is denied until one is settled", async () => {
  const user = newUser();
  const a = await u.check(gpt(user));
  const b = await u.check(gpt(user));
  const c = await u.check(gpt(user));
  assert.deepEqual([a.allowed, b.allowed, c.allowed], [true, true, false]);
  assert.equal(c.reason, "concurrency_limit");
  assert.equal(rule(a, "concurrent").window, null);
  await u.settle({ reservation: a.reservation, tokens: 0 });
  assert.equal((await u.check(gpt(user))).allowed, true);
});
