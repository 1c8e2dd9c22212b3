// The client's own behaviour against a stand-in daemon: what goes on the wire for each method,
// matching by msgid, deadlines, reconnects with auth, retries of log calls, and close().
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, UsagedError } from "../../dist/esm/index.js";
import { FakeDaemon, standard } from "../fake-daemon.mjs";

async function withFake(handle, fn, opts = {}) {
  const fake = await new FakeDaemon(standard(handle)).listen();
  const u = await connect({ path: fake.path, ...opts });
  try {
    await fn(u, fake);
  } finally {
    await u.close();
    await fake.stop();
  }
}

const rejectsWith = (p, code) => assert.rejects(p, (e) => {
  assert.ok(e instanceof UsagedError, `not a UsagedError: ${e}`);
  assert.equal(e.code, code, e.message);
  return true;
});

test("each method sends its params in snake_case as the protocol has them", async () => {
  const answers = {
    check: { allowed: true, reservation: "r1" }, settle: { settled: true, duplicate: false },
    usage: { limits: [] }, stats: { connections: {} }, log_usage: { accepted: 1 }, log_prompt: { accepted: 1 },
  };
  await withFake((m, c) => c.reply(m[1], null, answers[m[2]]), async (u, fake) => {
    const when = new Date(1700000000000);
    assert.equal((await u.check({ userId: "u1", provider: "openai", model: "gpt-4o", cost: 1, tokens: 800, spend: 0.002 })).reservation, "r1");
    assert.deepEqual(await u.settle({ reservation: "r1", tokens: 750, spend: "0.0019" }), { settled: true, duplicate: false });
    await u.settle({ reservation: "r2", cancel: true });
    assert.deepEqual(await u.usage({ userId: "u1", provider: "openai" }), { limits: [], degraded: false, truncated: false });
    assert.deepEqual(await u.stats(), { connections: {} });
    const lu = await u.logUsage([{ userId: "u1", provider: "openai", statusCode: 200, createdAt: when }], { ack: "durable" });
    assert.equal(lu.accepted, 1);
    await u.logPrompt([{ userId: "u1", status: "completed", tokensUsed: 750, costUsd: 0.0019, reservation: "r1" }]);
    assert.deepEqual(fake.of("check")[0][3], [{ user_id: "u1", provider: "openai", model: "gpt-4o", cost: 1, tokens: 800, spend: "0.002" }]);
    assert.deepEqual(fake.of("settle").map((m) => m[3]), [[{ reservation: "r1", tokens: 750, spend: "0.0019" }], [{ reservation: "r2", cancel: true }]]);
    assert.deepEqual(fake.of("usage")[0][3], [{ user_id: "u1", provider: "openai" }]);
    assert.deepEqual(fake.of("stats")[0][3], []);
    const [events, opts] = fake.of("log_usage")[0][3];
    assert.deepEqual(opts, { ack: "durable" });
    assert.deepEqual(events, [{ id: lu.ids[0], user_id: "u1", provider: "openai", status_code: 200, created_at: when }]);
    const [pevents, popts] = [fake.of("log_prompt")[0][3][0], fake.of("log_prompt")[0][3][1]];
    assert.equal(popts, undefined, "no ack option unless one is given");
    assert.equal(pevents[0].cost_usd, "0.0019");
    assert.equal(pevents[0].reservation, "r1");
    assert.match(pevents[0].id, /^[0-9a-f-]{14}7/);
  });
});

test("NoWait log calls are notifications and return the ids sent", async () => {
  await withFake(() => {}, async (u, fake) => {
    const ids = u.logUsageNoWait([{ userId: "u", provider: "p" }, { id: "given", userId: "u", provider: "p" }]);
    const pids = u.logPromptNoWait([{ userId: "u", status: "failed" }]);
    await fake.until(() => fake.of("log_prompt").length === 1);
    const n = fake.of("log_usage")[0];
    assert.deepEqual(n.slice(0, 2), [2, "log_usage"]);
    assert.deepEqual(n[2][0].map((e) => e.id), ids);
    assert.equal(ids[1], "given");
    assert.equal(fake.of("log_prompt")[0][2][0][0].id, pids[0]);
  });
});

test("answers that come back out of order reach their own calls", async () => {
  const held = [];
  await withFake((m, c) => {
    held.push([m, c]);
    if (held.length === 50) for (const [hm, hc] of held.reverse()) hc.reply(hm[1], null, { allowed: true, remaining_minute: hm[3][0].cost });
  }, async (u) => {
    const rs = await Promise.all(Array.from({ length: 50 }, (_, i) => u.check({ userId: "u", provider: "p", cost: i })));
    rs.forEach((r, i) => assert.equal(r.remainingMinute, i));
  });
});

test("a call with no answer fails with timeout at its deadline, and a late answer is dropped", async () => {
  let late = null;
  await withFake((m, c) => { late = () => c.reply(m[1], null, { allowed: true }); }, async (u) => {
    await rejectsWith(u.check({ userId: "u", provider: "p" }, { timeoutMs: 50 }), "timeout");
    late();
    assert.equal((await u.ping()).version, "fake");
  });
});

test("the default check deadline comes from timeouts.check", async () => {
  await withFake(() => {}, async (u) => {
    const t0 = Date.now();
    await rejectsWith(u.check({ userId: "u", provider: "p" }), "timeout");
    // Timers count from the event loop's clock, read at the start of its turn: one may fire a
    // few ms short of Date.now()'s count. The default deadline (1000 ms) is far off either way.
    const took = Date.now() - t0;
    assert.ok(took >= 70 && took < 1000, `the check failed after ${took} ms`);
  }, { timeouts: { check: 80 } });
});

test("calls in flight when the connection drops fail with closed; the client reconnects and sends auth first", async () => {
  let drop = true;
  await withFake((m, c) => {
    if (drop) { drop = false; c.sock.destroy(); return; }
    c.reply(m[1], null, { allowed: true });
  }, async (u, fake) => {
    await rejectsWith(u.check({ userId: "u", provider: "p" }), "closed");
    assert.equal((await u.check({ userId: "u", provider: "p" })).allowed, true);
    assert.equal(fake.accepted, 2);
    const second = fake.messages.filter(([n]) => n === 2).map(([, m]) => m[2]);
    assert.deepEqual(second, ["auth", "check"]);
    assert.deepEqual(fake.of("auth").map((m) => m[3]), [["tok"], ["tok"]]);
  }, { token: "tok" });
});

test("a log call refused with overloaded is sent again after retryAfterMs with the same ids", async () => {
  let refusals = 2;
  await withFake((m, c) => {
    if (refusals-- > 0) c.reply(m[1], { code: "overloaded", message: "full", retry_after_ms: 20 });
    else c.reply(m[1], null, { accepted: m[3][0].length });
  }, async (u, fake) => {
    const r = await u.logUsage([{ userId: "u", provider: "p" }, { userId: "u", provider: "p" }]);
    assert.equal(r.accepted, 2);
    const sent = fake.of("log_usage");
    assert.equal(sent.length, 3);
    for (const m of sent) assert.deepEqual(m[3][0].map((e) => e.id), r.ids);
    assert.equal(new Set(sent.map((m) => m[1])).size, 3, "each attempt has its own msgid");
  });
});

test("log retries are bounded, and checks are never retried", async () => {
  await withFake((m, c) => c.reply(m[1], { code: "unavailable", message: "down", retry_after_ms: 5 }), async (u, fake) => {
    await assert.rejects(u.logPrompt([{ userId: "u", status: "completed" }]), (e) => e.code === "unavailable" && e.retryAfterMs === 5);
    assert.equal(fake.of("log_prompt").length, 3);
    await rejectsWith(u.check({ userId: "u", provider: "p" }), "unavailable");
    assert.equal(fake.of("check").length, 1);
  }, { logRetries: 2 });
});

test("a retry that could not finish before the deadline is not made", async () => {
  await withFake((m, c) => c.reply(m[1], { code: "overloaded", message: "full", retry_after_ms: 5000 }), async (u, fake) => {
    await rejectsWith(u.logUsage([{ userId: "u", provider: "p" }], { timeoutMs: 200 }), "overloaded");
    assert.equal(fake.of("log_usage").length, 1);
  });
});

test("the daemon's error notification before a close is what in-flight calls fail with", async () => {
  await withFake((m, c) => {
    c.notify("error", [{ code: "too_large", message: "over max_message_bytes" }]);
    c.sock.end();
  }, async (u) => {
    await rejectsWith(u.logUsage([{ userId: "u", provider: "p" }]), "too_large");
  });
});

test("a request over maxMessageBytes fails with too_large and is never sent", async () => {
  await withFake((m, c) => c.reply(m[1], null, { accepted: 1 }), async (u, fake) => {
    await rejectsWith(u.logUsage([{ userId: "u", provider: "p", errorMessage: "x".repeat(2000) }]), "too_large");
    assert.throws(() => u.logUsageNoWait([{ userId: "u", provider: "p", errorMessage: "x".repeat(2000) }]), (e) => e.code === "too_large");
    assert.equal((await u.logUsage([{ userId: "u", provider: "p" }])).accepted, 1);
    assert.equal(fake.of("log_usage").length, 1);
  }, { maxMessageBytes: 1000 });
});

test("notifications queued while the daemon is away are sent once it is back, before close() returns", async () => {
  await withFake(() => {}, async (u, fake) => {
    await u.ping();
    fake.dropAll();
    await new Promise((r) => u.once("disconnect", r));
    const ids = u.logUsageNoWait([{ userId: "u", provider: "p" }]);
    assert.equal(await u.close(), 0, "every notification was written");
    await fake.until(() => fake.of("log_usage").length === 1);
    assert.equal(fake.of("log_usage")[0][2][0][0].id, ids[0]);
    assert.equal(fake.accepted, 2);
  });
});

test("close() waits for answers still due; calls after close() fail with closed", async () => {
  await withFake((m, c) => setTimeout(() => c.reply(m[1], null, { accepted: 1 }), 30), async (u) => {
    const p = u.logUsage([{ userId: "u", provider: "p" }]);
    await u.close();
    assert.equal((await p).accepted, 1);
    await rejectsWith(u.ping(), "closed");
    assert.throws(() => u.logUsageNoWait([{ userId: "u", provider: "p" }]), (e) => e.code === "closed");
  });
});

test("connect fails with closed when nothing listens, and with the daemon's error on a refused auth", async () => {
  await rejectsWith(connect({ path: "/nonexistent/usaged.sock" }), "closed");
  const fake = await new FakeDaemon((m, c) => {
    c.reply(m[1], { code: "unauthorized", message: "wrong token" });
    c.sock.end();
  }).listen();
  await rejectsWith(connect({ path: fake.path, token: "bad" }), "unauthorized");
  await fake.stop();
});

test("msgids stay unique among calls in flight", async () => {
  const held = [];
  await withFake((m, c) => held.push([m, c]), async (u, fake) => {
    const ps = Array.from({ length: 2000 }, () => u.stats({ timeoutMs: 5000 }));
    await fake.until(() => held.length === 2000);
    assert.equal(new Set(held.map(([m]) => m[1])).size, 2000);
    for (const [m, c] of held) c.reply(m[1], null, { msgid: m[1] });
    const answers = await Promise.all(ps);
    assert.deepEqual(answers.map((a) => a.msgid), held.map(([m]) => m[1]));
  });
});

test("while no daemon can be reached, requests fail at once with closed; notifications wait for its return", async () => {
  const first = await new FakeDaemon(standard()).listen();
  const u = await connect({ path: first.path, reconnect: { minDelayMs: 10, maxDelayMs: 20 } });
  const gone = new Promise((r) => u.once("disconnect", r));
  await first.stop(true);
  await gone;
  const t0 = Date.now();
  await rejectsWith(u.check({ userId: "u", provider: "p" }, { timeoutMs: 10000 }), "closed");
  assert.ok(Date.now() - t0 < 5000, "failed at once, not at its deadline");
  const ids = u.logUsageNoWait([{ userId: "u", provider: "p" }]);
  const back = await new FakeDaemon(standard(), first.path).listen();
  await back.until(() => back.of("log_usage").length === 1);
  assert.equal(back.of("log_usage")[0][2][0][0].id, ids[0]);
  await u.close();
  await back.stop();
  await first.stop();
});

test("close() says how many notifications it could not write when the daemon stays away", async () => {
  const fake = await new FakeDaemon(standard()).listen();
  const u = await connect({ path: fake.path, closeTimeoutMs: 100, reconnect: { minDelayMs: 10, maxDelayMs: 20 } });
  const gone = new Promise((r) => u.once("disconnect", r));
  await fake.stop();
  await gone;
  u.logUsageNoWait([{ userId: "u", provider: "p" }]);
  u.logPromptNoWait([{ userId: "u", status: "failed" }]);
  assert.equal(await u.close(), 2);
});

test("an error notification that answers went past does not explain a later close", async () => {
  let n = 0;
  await withFake((m, c) => {
    if (n++ === 0) {
      c.notify("error", [{ code: "bad_request", message: "not an envelope" }]);
      c.reply(m[1], null, { allowed: true });
    } else c.sock.destroy();
  }, async (u) => {
    assert.equal((await u.check({ userId: "u", provider: "p" })).allowed, true);
    await rejectsWith(u.check({ userId: "u", provider: "p" }), "closed");
  });
});

const invalidField = (field, index) => (e) => {
  assert.ok(e instanceof UsagedError, `not a UsagedError: ${e}`);
  assert.equal(e.code, "invalid_field", e.message);
  assert.equal(e.field, field);
  assert.equal(e.index, index);
  return true;
};

test("usage gives the answer's limits, degraded and truncated", async () => {
  const limit = { dimension: "requests", window: "minute", scope: "provider", limit: 60, used: 1, remaining: 59, reset_ms: 5, provider: "openai", model: null };
  await withFake((m, c) => c.reply(m[1], null, { limits: [limit], degraded: true, truncated: true }), async (u) => {
    const r = await u.usage({ userId: "u" });
    assert.equal(r.degraded, true);
    assert.equal(r.truncated, true);
    assert.deepEqual(r.limits, [{ dimension: "requests", window: "minute", scope: "provider", limit: 60, used: 1, remaining: 59, resetMs: 5, provider: "openai", model: null }]);
  });
});

test("a request made right after the connection drops waits for the first reconnect, which a restarted daemon answers", async () => {
  await withFake((m, c) => c.reply(m[1], null, { allowed: true }), async (u, fake) => {
    const gone = new Promise((r) => u.once("disconnect", r));
    fake.dropAll();
    await gone;
    assert.equal((await u.check({ userId: "u", provider: "p" }, { timeoutMs: 10000 })).allowed, true);
    assert.equal(fake.accepted, 2);
  }, { reconnect: { minDelayMs: 50, maxDelayMs: 50 } });
});

test("a reconnect refused for its token fails the waiting request with unauthorized, and later ones say why", async () => {
  // A token rotated on the daemon, not in the app: the reason must reach the caller.
  let refuse = false;
  const answer = standard((m, c) => c.reply(m[1], null, { allowed: true }));
  const fake = await new FakeDaemon((m, c) => {
    if (refuse && m[0] === 0 && m[2] === "auth") {
      c.reply(m[1], { code: "unauthorized", message: "wrong token" });
      c.sock.end();
    } else answer(m, c);
  }).listen();
  const u = await connect({ path: fake.path, token: "old", reconnect: { minDelayMs: 50, maxDelayMs: 50 } });
  try {
    refuse = true;
    const gone = new Promise((r) => u.once("disconnect", r));
    fake.dropAll();
    await gone;
    await rejectsWith(u.check({ userId: "u", provider: "p" }, { timeoutMs: 10000 }), "unauthorized");
    await assert.rejects(u.check({ userId: "u", provider: "p" }),
      (e) => e.code === "closed" && /wrong token/.test(e.message));
  } finally {
    await u.close();
    await fake.stop();
  }
});

test("once a reconnect attempt has failed, requests fail at once with closed, between attempts and during one", async () => {
  // A daemon that hangs: it takes connections and answers nothing, so that each attempt lasts
  // connectTimeoutMs and a request that waited for one would fail with timeout.
  let silent = false;
  const answer = standard((m, c) => c.reply(m[1], null, { allowed: true }));
  const fake = await new FakeDaemon((m, c) => { if (!silent) answer(m, c); }).listen();
  const u = await connect({ path: fake.path, connectTimeoutMs: 300, reconnect: { minDelayMs: 300, maxDelayMs: 300 } });
  const check = () => u.check({ userId: "u", provider: "p" }, { timeoutMs: 10000 });
  const atOnce = async (what) => {
    const t0 = Date.now();
    await rejectsWith(check(), "closed");
    assert.ok(Date.now() - t0 < 250, `${what}: failed after ${Date.now() - t0} ms, not at once`);
  };
  try {
    silent = true;
    const gone = new Promise((r) => u.once("disconnect", r));
    fake.dropAll();
    await gone;
    // The first attempt after a drop is expected to succeed (a daemon restarting): a request
    // waits for it, and fails with it.
    await assert.rejects(check(), UsagedError);
    assert.equal(fake.of("ping").length, 2, "the request waited for the first attempt");
    await atOnce("between attempts");
    await fake.until(() => fake.of("ping").length === 3); // the next attempt is in its handshake
    await atOnce("during an attempt");
    assert.equal(fake.of("check").length, 0);
    // Notifications still wait for the daemon's return, and requests are sent again then.
    const ids = u.logUsageNoWait([{ userId: "u", provider: "p" }]);
    silent = false;
    await new Promise((r) => u.once("connect", r));
    assert.equal((await check()).allowed, true);
    await fake.until(() => fake.of("log_usage").length === 1);
    assert.equal(fake.of("log_usage")[0][2][0][0].id, ids[0]);
  } finally {
    await u.close();
    await fake.stop();
  }
});

test("with reconnect: false, once the connection dropped every call fails at once with closed", async () => {
  await withFake((m, c) => c.reply(m[1], null, { allowed: true, accepted: 1 }), async (u, fake) => {
    assert.equal((await u.check({ userId: "u", provider: "p" })).allowed, true);
    const gone = new Promise((r) => u.once("disconnect", r));
    fake.dropAll();
    await gone;
    const t0 = Date.now();
    await rejectsWith(u.check({ userId: "u", provider: "p" }, { timeoutMs: 3000 }), "closed");
    await rejectsWith(u.logUsage([{ userId: "u", provider: "p" }], { timeoutMs: 3000 }), "closed");
    await rejectsWith(u.ping({ timeoutMs: 3000 }), "closed");
    assert.ok(Date.now() - t0 < 1000, `failed after ${Date.now() - t0} ms, not at once`);
    assert.throws(() => u.logUsageNoWait([{ userId: "u", provider: "p" }]), (e) => e.code === "closed");
    assert.equal(fake.accepted, 1, "no reconnect");
    assert.equal(await u.close(), 0);
  }, { reconnect: false });
});

test("an Invalid Date is refused with invalid_field naming createdAt and the event's index, and is never sent", async () => {
  await withFake((m, c) => c.reply(m[1], null, { accepted: 1, allowed: true }), async (u, fake) => {
    const events = [
      { userId: "u", provider: "p", createdAt: new Date(1700000000000) },
      { userId: "u", provider: "p", createdAt: new Date("x") },
    ];
    const p = u.logUsage(events); // a rejection, not a throw
    await assert.rejects(p, invalidField("createdAt", 1));
    await assert.rejects(u.logPrompt([{ userId: "u", status: "failed", createdAt: new Date(NaN) }]), invalidField("createdAt", 0));
    assert.throws(() => u.logUsageNoWait(events), invalidField("createdAt", 1));
    assert.throws(() => u.logPromptNoWait([{ userId: "u", status: "failed", createdAt: new Date("") }]), invalidField("createdAt", 0));
    await u.ping(); // what went before it reached the daemon first
    assert.equal(fake.of("log_usage").length + fake.of("log_prompt").length, 0);
  });
});

test("log calls whose events are not an array fail with invalid_field naming events, not bad_request", async () => {
  await withFake((m, c) => c.reply(m[1], { code: "bad_request", message: "params must be an array" }), async (u, fake) => {
    for (const bad of ["x", null, undefined, 5, { userId: "u", provider: "p" }]) {
      await assert.rejects(u.logUsage(bad), invalidField("events", null));
      await assert.rejects(u.logPrompt(bad), invalidField("events", null));
      assert.throws(() => u.logUsageNoWait(bad), invalidField("events", null));
      assert.throws(() => u.logPromptNoWait(bad), invalidField("events", null));
    }
    await u.ping();
    assert.equal(fake.of("log_usage").length + fake.of("log_prompt").length, 0);
  });
});

test("close() takes at most closeTimeoutMs, and a call it cuts off fails with closed saying the client was closed", async () => {
  // A daemon that answers no check and never closes its side of the connection (a stopped one).
  const fake = await new FakeDaemon(standard(() => {}), null, { allowHalfOpen: true }).listen();
  const u = await connect({ path: fake.path, closeTimeoutMs: 300 });
  const p = u.check({ userId: "u", provider: "p" }, { timeoutMs: 10000 });
  p.catch(() => {});
  await fake.until(() => fake.of("check").length === 1);
  const t0 = Date.now();
  assert.equal(await u.close(), 0);
  const took = Date.now() - t0;
  assert.ok(took >= 250 && took < 800, `close() took ${took} ms with closeTimeoutMs 300`);
  await assert.rejects(p, (e) => {
    assert.equal(e.code, "closed");
    assert.match(e.message, /client was closed/);
    return true;
  });
  await fake.stop();
});
