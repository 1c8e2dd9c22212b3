// 10,000 checks pipelined on one connection: every one answered, each answer its own.
import { test } from "node:test";
import assert from "node:assert/strict";
import { client, newUser } from "./env.mjs";

test("10,000 pipelined checks on one connection are each answered once, to their own call", async () => {
  const u = await client();
  try {
    const users = Array.from({ length: 10 }, () => newUser());
    const n = 10000;
    // Deadlines wide enough for a sanitizer build: this tests matching, not speed.
    const calls = Array.from({ length: n }, (_, i) =>
      u.check({ userId: users[i % users.length], provider: "bulk" }, { timeoutMs: 60000 }));
    const results = await Promise.all(calls);
    assert.equal(results.length, n);
    assert.ok(results.every((r) => r.allowed));
    // Each user's checks took one unit each from the day window: their remainingDay values are
    // exactly limit-1 ... limit-1000, once each, whatever order they were answered in.
    const perUser = new Map(users.map((id) => [id, []]));
    results.forEach((r, i) => perUser.get(users[i % users.length]).push(r.remainingDay));
    for (const seen of perUser.values()) {
      const sorted = [...seen].sort((a, b) => b - a);
      assert.deepEqual(sorted, Array.from({ length: n / users.length }, (_, k) => 1e9 - 1 - k));
    }
  } finally {
    await u.close();
  }
});
