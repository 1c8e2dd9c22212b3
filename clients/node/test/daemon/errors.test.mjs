// Every error code the client can get, each from the real daemon (internal, a daemon bug, has no
// way to be caused; its mapping is a unit test).
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { connect, UsagedError } from "../../dist/esm/index.js";
import { client, count, env, waitFor } from "./env.mjs";

const nopg = { socket: process.env.USAGED_SOCKET_NOPG, pid: Number(process.env.USAGED_PID_NOPG) };

let u;
before(async () => { u = await client(); });
after(async () => { await u.close(); });

function fails(code, check = () => {}) {
  return (e) => {
    assert.ok(e instanceof UsagedError, `not a UsagedError: ${e?.stack ?? e}`);
    assert.equal(e.code, code, `${e.message} (${e.cause?.message ?? ""})`);
    check(e);
    return true;
  };
}

test("invalid_field names the field in camelCase", async () => {
  await assert.rejects(u.check({ userId: "not-a-uuid", provider: "tiny" }), fails("invalid_field", (e) => assert.equal(e.field, "userId")));
  await assert.rejects(u.check({ userId: env.user, provider: "tiny", cost: -1 }), fails("invalid_field", (e) => assert.equal(e.field, "cost")));
});

test("invalid_field of a log call gives the first bad event's index, and keeps none of them", async () => {
  const events = [
    { userId: env.user, provider: "openai", endpoint: "errors-all-or-nothing" },
    { userId: env.user, provider: "openai", endpoint: "errors-all-or-nothing", statusCode: 99 },
  ];
  await assert.rejects(u.logUsage(events, { ack: "durable" }), fails("invalid_field", (e) => {
    assert.equal(e.field, "statusCode");
    assert.equal(e.index, 1);
  }));
  await assert.rejects(u.logPrompt([{ userId: env.user, status: "done" }]), fails("invalid_field", (e) => {
    assert.equal(e.field, "status");
    assert.equal(e.index, 0);
  }));
  await u.logUsage([{ userId: env.user, provider: "openai", endpoint: "errors-marker" }], { ack: "durable" });
  assert.equal(count("SELECT count(*) FROM public.api_usage_logs WHERE endpoint = 'errors-all-or-nothing'"), 0);
});

test("invalid_field from the client itself: an Invalid Date, and events that are not an array; nothing is stored", async () => {
  const events = [
    { userId: env.user, provider: "openai", endpoint: "errors-invalid-date" },
    { userId: env.user, provider: "openai", endpoint: "errors-invalid-date", createdAt: new Date("x") },
  ];
  await assert.rejects(u.logUsage(events, { ack: "durable" }), fails("invalid_field", (e) => {
    assert.equal(e.field, "createdAt");
    assert.equal(e.index, 1);
  }));
  for (const bad of ["x", null]) {
    await assert.rejects(u.logUsage(bad), fails("invalid_field", (e) => assert.equal(e.field, "events")));
    await assert.rejects(u.logPrompt(bad), fails("invalid_field", (e) => assert.equal(e.field, "events")));
  }
  await u.logUsage([{ userId: env.user, provider: "openai", endpoint: "errors-marker" }], { ack: "durable" });
  assert.equal(count("SELECT count(*) FROM public.api_usage_logs WHERE endpoint = 'errors-invalid-date'"), 0);
});

test("bad_request for params of the wrong shape", async () => {
  await assert.rejects(u.request("check", "not an array"), fails("bad_request"));
});

test("unknown_method", async () => {
  await assert.rejects(u.request("no_such_method", []), fails("unknown_method"));
});

test("unknown_provider", async () => {
  await assert.rejects(u.check({ userId: env.user, provider: "no-such-provider" }), fails("unknown_provider"));
});

test("unauthorized without a token, and with a wrong one", async () => {
  await assert.rejects(connect({ path: env.socket }), fails("unauthorized"));
  await assert.rejects(connect({ path: env.socket, token: "wrong" }), fails("unauthorized"));
});

test("too_large from the daemon: the message is over its max_message_bytes (64 KiB here)", async () => {
  const c = await client({ maxMessageBytes: 1 << 20 });
  try {
    const big = [{ userId: env.user, provider: "openai", errorMessage: "x".repeat(100000) }];
    await assert.rejects(c.logUsage(big), fails("too_large"));
    assert.equal((await c.ping()).protocol, 1, "the client reconnects after the daemon closed it");
  } finally {
    await c.close();
  }
});

test("too_large from the client: over its own maxMessageBytes, never sent", async () => {
  const big = [{ userId: env.user, provider: "openai", errorMessage: "x".repeat(2 << 20) }];
  await assert.rejects(u.logUsage(big), fails("too_large"));
  assert.equal((await u.ping()).protocol, 1);
});

test("timeout when the daemon does not answer in time, and the client goes on after", async () => {
  const c = await client();
  process.kill(env.pid, "SIGSTOP");
  try {
    await assert.rejects(c.check({ userId: env.user, provider: "tiny", cost: 0 }, { timeoutMs: 200 }), fails("timeout"));
  } finally {
    process.kill(env.pid, "SIGCONT");
  }
  assert.equal((await c.ping()).protocol, 1);
  await c.close();
});

test("closed when no daemon listens", async () => {
  await assert.rejects(connect({ path: env.socket + ".none" }), fails("closed"));
});

test("closed for a call after close()", async () => {
  const c = await client();
  await c.close();
  await assert.rejects(c.ping(), fails("closed"));
});

test("unavailable before the daemon could read api_providers, with retryAfterMs", async () => {
  const c = await connect({ path: nopg.socket });
  try {
    await assert.rejects(c.check({ userId: env.user, provider: "openai" }), fails("unavailable", (e) => assert.ok(e.retryAfterMs > 0)));
  } finally {
    await c.close();
  }
});

test("overloaded past max_connections, with retryAfterMs; then shutting_down once it is stopping", async () => {
  const a = await connect({ path: nopg.socket });
  const b = await connect({ path: nopg.socket });
  await assert.rejects(connect({ path: nopg.socket }), fails("overloaded", (e) => assert.ok(e.retryAfterMs > 0)));
  // A durable log in flight (its spool fsync is slow here) keeps the connection open through
  // the stop; the check answered after it shows that the daemon has read it.
  const durable = a.logUsage([{ userId: env.user, provider: "openai" }], { ack: "durable", timeoutMs: 30000 });
  await assert.rejects(a.check({ userId: env.user, provider: "openai" }), fails("unavailable"));
  await b.close();
  process.kill(nopg.pid, "SIGTERM");
  let err;
  await waitFor(async () => {
    err = await a.check({ userId: env.user, provider: "openai" }).then(() => null, (e) => e);
    return err && err.code !== "unavailable";
  }, "the daemon to refuse as it stops");
  assert.equal(err.code, "shutting_down", err.message);
  assert.equal((await durable).accepted, 1, "what was accepted before the stop is still acked");
  await a.close();
});
