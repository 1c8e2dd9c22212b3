// The daemon SIGKILLed under its clients, as the reviewer of issue "requests wait for a daemon that
// is away" did: while it is away, checks fail at once with closed (not at their deadline, nor
// when the next reconnect attempt fails), a client with reconnect: false fails every call at
// once, and once the daemon is back checks succeed again. This file kills the daemon itself;
// tests/integration/test_node_client.py starts it again once this file has written the marker
// USAGED_AWAY_MARKER.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { UsagedError } from "../../dist/esm/index.js";
import { client, env, newUser } from "./env.mjs";

/** The code a call failed with and how long it took, or ["ok", ms]. */
async function outcome(p) {
  const t0 = Date.now();
  const code = await p.then(() => "ok", (e) => {
    assert.ok(e instanceof UsagedError, String(e));
    return e.code;
  });
  return [code, Date.now() - t0];
}

test("while the daemon is away calls fail at once with closed; once it is back checks succeed", async () => {
  // A backoff that reaches 1 s: the checks below span several reconnect attempts, and before the
  // fix waited for each one.
  const u = await client({ reconnect: { minDelayMs: 50, maxDelayMs: 1000 } });
  const once = await client({ reconnect: false });
  const user = newUser();
  try {
    assert.equal((await u.check({ userId: user, provider: "bulk" })).allowed, true);
    const gone = Promise.all([u, once].map((c) => new Promise((r) => c.once("disconnect", r))));
    process.kill(env.pid, "SIGKILL");
    await gone;
    // The first reconnect attempt after the drop is waited for; nothing listens, so it fails.
    assert.equal((await outcome(u.check({ userId: user, provider: "bulk" })))[0], "closed");
    // Checks for 2 s, paced as an app's requests come (one each 100 ms: not a wait for anything).
    const outcomes = [];
    for (const end = Date.now() + 2000; Date.now() < end;) {
      outcomes.push(await outcome(u.check({ userId: user, provider: "bulk" })));
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(outcomes.every(([code, ms]) => code === "closed" && ms < 250),
      `each check fails at once with closed: ${JSON.stringify(outcomes)}`);
    assert.ok(outcomes.length >= 10, `only ${outcomes.length} checks`);
    const [code, ms] = await outcome(once.ping({ timeoutMs: 5000 }));
    assert.ok(code === "closed" && ms < 250, `reconnect: false: ${code} after ${ms} ms`);
    assert.throws(() => once.logUsageNoWait([{ userId: env.user, provider: "openai" }]), (e) => e.code === "closed");
    const back = new Promise((r) => u.once("connect", r));
    writeFileSync(process.env.USAGED_AWAY_MARKER, "away\n");
    await back;
    assert.equal((await u.check({ userId: user, provider: "bulk" })).allowed, true);
  } finally {
    await u.close();
    await once.close();
  }
});
