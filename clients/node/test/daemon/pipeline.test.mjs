// 10,000 checks pipelined on one connection: every one answered, each answer its own.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { client } from "./env.mjs";

test("10,000 pipelined checks on one connection are each answered once, to their own call", async () => {
  const u = await client();
  try {
    const n = 10000;
    // Each check is the first of its own user, with a cost of its own: its answer can only be
    // the one whose remaining quota is the limit less that cost.
    const costs = Array.from({ length: n }, (_, i) => i + 1);
    // Deadlines wide enough for a sanitizer build: this tests matching, not speed.
    const results = await Promise.all(costs.map((cost) =>
      u.check({ userId: randomUUID(), provider: "bulk", cost }, { timeoutMs: 60000 })));
    assert.equal(results.length, n);
    results.forEach((r, i) => {
      assert.equal(r.allowed, true);
      assert.equal(r.remainingDay, 1e9 - costs[i], `check ${i}`);
      assert.equal(r.remainingMinute, 1e8 - costs[i], `check ${i}`);
    });
  } finally {
    await u.close();
  }
});
