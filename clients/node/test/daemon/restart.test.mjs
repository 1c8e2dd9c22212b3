// A daemon restart in the middle of a stream of calls: every call ends (succeeds, or fails with
// closed or shutting_down), none hangs, and the client goes on once the daemon is back. The
// restart itself is done by tests/integration/test_node_client.py once this file has written
// the marker USAGED_RESTART_MARKER.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { UsagedError } from "../../dist/esm/index.js";
import { client, env, newUser } from "./env.mjs";

test("calls through a daemon restart succeed or fail with closed; none hangs", async () => {
  // Deadlines well past what a (sanitized, busy) daemon needs, so that only the restart itself
  // can fail a call.
  const u = await client({ reconnect: { minDelayMs: 20, maxDelayMs: 200 }, timeouts: { check: 5000 } });
  const user = newUser();
  const outcomes = new Map();
  const count = (k) => outcomes.set(k, (outcomes.get(k) ?? 0) + 1);
  let disconnects = 0;
  u.on("disconnect", () => disconnects++);
  let okAfterRestart = 0;
  let marked = false;
  const deadline = Date.now() + 60000;
  // Waves of checks and logs, 50 at a time, until the daemon has gone away and 200 calls have
  // succeeded on the new daemon.
  while (okAfterRestart < 200 && Date.now() < deadline) {
    const wave = [];
    for (let i = 0; i < 50; i++) {
      const p = i % 5 === 0
        ? u.logUsage([{ userId: env.user, provider: "openai", endpoint: "restart-stream" }])
        : u.check({ userId: user, provider: "bulk" });
      wave.push(p.then(() => "ok", (e) => {
        assert.ok(e instanceof UsagedError, String(e));
        return e.code;
      }));
    }
    for (const r of await Promise.all(wave)) {
      count(r);
      if (r === "ok" && disconnects > 0) okAfterRestart++;
    }
    if (!marked && (outcomes.get("ok") ?? 0) >= 500) {
      writeFileSync(process.env.USAGED_RESTART_MARKER, "streaming\n");
      marked = true;
    }
  }
  await u.close();
  const codes = [...outcomes.keys()].filter((k) => k !== "ok");
  for (const c of codes) assert.ok(["closed", "shutting_down"].includes(c), `a call failed with ${c}`);
  assert.ok(disconnects >= 1, "the daemon went away");
  assert.equal(okAfterRestart, 200, `calls succeed once the daemon is back (${JSON.stringify([...outcomes])})`);
});
