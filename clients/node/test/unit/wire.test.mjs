import { test } from "node:test";
import assert from "node:assert/strict";
import {
  fromWireCheck, fromWireLimit, fromWirePing, fromWireSettle, fromWireUsage, toDecimal, toWireEvents, toWireMap,
} from "../../dist/esm/wire.js";
import { UsagedError } from "../../dist/esm/errors.js";
import { uuidv7, uuidv7Time } from "../../dist/esm/uuid.js";

test("numbers become the decimal they print as, never exponent form", () => {
  assert.equal(toDecimal(0.0035), "0.0035");
  assert.equal(toDecimal(5), "5");
  assert.equal(toDecimal(1e-7), "0.0000001");
  assert.equal(toDecimal(1.25e-5), "0.0000125");
  assert.equal(toDecimal(1e21), "1000000000000000000000");
  assert.equal(toDecimal(1.5e22), "15000000000000000000000");
  assert.equal(toDecimal(-2e-7), "-0.0000002");
  assert.equal(toDecimal("0.10"), "0.10");
  assert.ok(Number.isNaN(toDecimal(NaN)));
});

test("maps go out in snake_case, without undefined values, decimals as strings", () => {
  const d = new Date(1700000000000);
  assert.deepEqual(
    toWireMap({ userId: "u", provider: "openai", model: "gpt-4o", cost: 2, tokens: 1500, spend: 0.0035, x: undefined }),
    { user_id: "u", provider: "openai", model: "gpt-4o", cost: 2, tokens: 1500, spend: "0.0035" },
  );
  assert.deepEqual(
    toWireMap({ userId: "u", costUsd: 1e-6, tokensUsed: 10, vibeCoding: true, createdAt: d, errorMessage: null }),
    { user_id: "u", cost_usd: "0.000001", tokens_used: 10, vibe_coding: true, created_at: d, error_message: null },
  );
  assert.deepEqual(toWireMap({ reservation: "r1", cancel: true }), { reservation: "r1", cancel: true });
});

test("events without an id get a new UUIDv7; given ids are kept", () => {
  const before = Date.now();
  const { wire, ids } = toWireEvents([
    { userId: "u", provider: "p", statusCode: 200, responseTimeMs: 12 },
    { id: "0190a3b1-0000-7000-8000-000000000001", userId: "u", provider: "p" },
  ]);
  assert.equal(ids.length, 2);
  assert.equal(wire[0].id, ids[0]);
  assert.deepEqual(Object.keys(wire[0]).sort(), ["id", "provider", "response_time_ms", "status_code", "user_id"]);
  const t = uuidv7Time(ids[0]);
  assert.ok(t >= before && t <= Date.now(), "the id's time is now");
  assert.equal(ids[1], "0190a3b1-0000-7000-8000-000000000001");
  assert.equal(wire[1].id, ids[1]);
});

test("an Invalid Date is invalid_field naming its field (camelCase) and, in an event list, the event's index", () => {
  const bad = (field, index) => (e) => e instanceof UsagedError && e.code === "invalid_field" && e.field === field && e.index === index;
  assert.throws(() => toWireEvents([{ userId: "u", provider: "p" }, { userId: "u", provider: "p", createdAt: new Date("x") }]), bad("createdAt", 1));
  assert.throws(() => toWireMap({ createdAt: new Date(NaN) }), bad("createdAt", null));
  assert.deepEqual(toWireEvents([{ id: "i", createdAt: new Date(0) }]).wire, [{ id: "i", created_at: new Date(0) }]);
});

test("events that are not an array are invalid_field naming events", () => {
  for (const bad of ["x", null, undefined, 5, {}]) {
    assert.throws(() => toWireEvents(bad), (e) => e instanceof UsagedError && e.code === "invalid_field" && e.field === "events" && e.index === null);
  }
});

test("non-objects in an event list are sent as they are, for the daemon to refuse", () => {
  const { wire } = toWireEvents([{ userId: "u", provider: "p" }, 5]);
  assert.equal(wire[1], 5);
});

test("uuidv7 has the version, the variant and the time, and differs each call", () => {
  const ids = new Set();
  for (let i = 0; i < 1000; i++) {
    const id = uuidv7(1700000000123);
    assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.equal(uuidv7Time(id), 1700000000123);
    ids.add(id);
  }
  assert.equal(ids.size, 1000);
  assert.equal(uuidv7Time("0190a3b1-0000-4000-8000-000000000001"), null);
});

test("a v1 check answer maps to camelCase with the budget fields empty", () => {
  const r = fromWireCheck({
    allowed: false, reason: "minute_limit", limit_minute: 60, limit_day: null, remaining_minute: 0,
    remaining_day: null, reset_minute_ms: 1200, reset_day_ms: 5000000, retry_after_ms: 1200, degraded: false,
  });
  assert.deepEqual(r, {
    allowed: false, reason: "minute_limit", retryAfterMs: 1200, remainingMinute: 0, remainingDay: null,
    limitMinute: 60, limitDay: null, resetMinuteMs: 1200, resetDayMs: 5000000, degraded: false,
    reservation: null, limits: [], deniedBy: null, shadowDeniedBy: null,
  });
});

test("a budget check answer maps its limits, reservation and denying rules", () => {
  const spend = { dimension: "spend", window: "day", scope: "model", limit: "5.000000", used: "4.990000", remaining: "0.010000", reset_ms: 3600000 };
  const conc = { dimension: "concurrent", window: null, scope: "user", limit: 2, used: 1, remaining: 1, reset_ms: null };
  const r = fromWireCheck({
    allowed: true, reason: null, limit_minute: null, limit_day: null, remaining_minute: null, remaining_day: null,
    reset_minute_ms: 10, reset_day_ms: 20, retry_after_ms: 0, degraded: false, reservation: "res-1",
    limits: [spend, conc], denied_by: null, shadow_denied_by: spend,
  });
  assert.equal(r.reservation, "res-1");
  assert.deepEqual(r.limits[0], { dimension: "spend", window: "day", scope: "model", limit: "5.000000", used: "4.990000", remaining: "0.010000", resetMs: 3600000 });
  assert.deepEqual(r.limits[1], { dimension: "concurrent", window: null, scope: "user", limit: 2, used: 1, remaining: 1, resetMs: null });
  assert.deepEqual(r.shadowDeniedBy, r.limits[0]);
  assert.equal(r.deniedBy, null);
  const unlimited = fromWireLimit({ dimension: "tokens", window: "month", scope: "provider", limit: null, used: null, remaining: null, reset_ms: 9 });
  assert.deepEqual([unlimited.limit, unlimited.used, unlimited.remaining], [null, null, null]);
});

test("settle, usage and ping answers map to camelCase", () => {
  assert.deepEqual(fromWireSettle({ settled: true, duplicate: true }), { settled: true, duplicate: true });
  assert.deepEqual(fromWireSettle({ settled: true, duplicate: false }), { settled: true, duplicate: false });
  const u = fromWireUsage({ limits: [{ dimension: "requests", window: "minute", scope: "provider", limit: 60, used: 42, remaining: 18, reset_ms: 100 }] });
  assert.deepEqual(u, { limits: [{ dimension: "requests", window: "minute", scope: "provider", limit: 60, used: 42, remaining: 18, resetMs: 100 }], degraded: false, truncated: false });
  assert.deepEqual(fromWireUsage({ limits: [], degraded: true, truncated: true }), { limits: [], degraded: true, truncated: true });
  assert.deepEqual(fromWirePing({ version: "1.2", protocol: 1, uptime_ms: 5 }), { version: "1.2", protocol: 1, uptimeMs: 5 });
});

test("an error map becomes a UsagedError with camelCase field, index and retryAfterMs", () => {
  const e = UsagedError.fromWire({ code: "invalid_field", message: "bad", field: "status_code", index: 2 });
  assert.ok(e instanceof UsagedError && e instanceof Error);
  assert.equal(e.code, "invalid_field");
  assert.equal(e.field, "statusCode");
  assert.equal(e.index, 2);
  assert.equal(e.retryAfterMs, null);
  const o = UsagedError.fromWire({ code: "overloaded", message: "full", retry_after_ms: 250 });
  assert.equal(o.retryAfterMs, 250);
  assert.equal(UsagedError.fromWire({ code: "unknown_reservation", message: "no" }).code, "unknown_reservation");
  assert.equal(UsagedError.fromWire("junk").code, "internal");
});
