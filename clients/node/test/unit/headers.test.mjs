import { test } from "node:test";
import assert from "node:assert/strict";
import { rateLimitHeaders } from "../../dist/esm/index.js";
import { fromWireCheck } from "../../dist/esm/wire.js";

const v1 = (o) => fromWireCheck({
  allowed: true, reason: null, limit_minute: 60, limit_day: 1000, remaining_minute: 59, remaining_day: 100,
  reset_minute_ms: 1500, reset_day_ms: 86000000, retry_after_ms: 0, degraded: false, ...o,
});

test("an allowed v1 check names the window with the least quota left", () => {
  assert.deepEqual(rateLimitHeaders(v1({})), { "RateLimit-Limit": "1000", "RateLimit-Remaining": "100", "RateLimit-Reset": "86000" });
  assert.deepEqual(rateLimitHeaders(v1({ remaining_minute: 3 })), { "RateLimit-Limit": "60", "RateLimit-Remaining": "3", "RateLimit-Reset": "2" });
});

test("a denied check adds Retry-After in whole seconds, rounded up", () => {
  const h = rateLimitHeaders(v1({ allowed: false, reason: "minute_limit", remaining_minute: 0, retry_after_ms: 1001 }));
  assert.deepEqual(h, { "RateLimit-Limit": "60", "RateLimit-Remaining": "0", "RateLimit-Reset": "2", "Retry-After": "2" });
});

test("an unlimited provider gives no RateLimit headers", () => {
  assert.deepEqual(rateLimitHeaders(v1({ limit_minute: null, limit_day: null, remaining_minute: null, remaining_day: null })), {});
});

test("budget rules: the denying rule is the one reported", () => {
  const spend = { dimension: "spend", window: "day", scope: "model", limit: "5.000000", used: "5.000000", remaining: "0.000000", reset_ms: 7200000 };
  const req = { dimension: "requests", window: "minute", scope: "provider", limit: 60, used: 1, remaining: 59, reset_ms: 30000 };
  const h = rateLimitHeaders(v1({ allowed: false, reason: "day_limit", retry_after_ms: 7200000, limits: [req, spend], denied_by: spend }));
  assert.deepEqual(h, { "RateLimit-Limit": "5.000000", "RateLimit-Remaining": "0.000000", "RateLimit-Reset": "7200", "Retry-After": "7200" });
});

test("budget rules: unlimited and concurrent-only entries do not hide a limited window", () => {
  const tokens = { dimension: "tokens", window: "minute", scope: "model", limit: 30000, used: 29000, remaining: 1000, reset_ms: 10000 };
  const unl = { dimension: "requests", window: "day", scope: "provider", limit: null, used: 5, remaining: null, reset_ms: 100 };
  assert.deepEqual(rateLimitHeaders(v1({ limits: [unl, tokens] })), { "RateLimit-Limit": "30000", "RateLimit-Remaining": "1000", "RateLimit-Reset": "10" });
});

test("shadow rules and concurrent slots are not told about while allowed", () => {
  const shadow = { dimension: "tokens", window: "minute", scope: "provider", limit: 100, used: 150, remaining: 0, reset_ms: 10000, shadow: true };
  const slots = { dimension: "concurrent", window: null, scope: "provider", limit: 2, used: 2, remaining: 0, reset_ms: null };
  const day = { dimension: "requests", window: "day", scope: "provider", limit: 1000, used: 10, remaining: 990, reset_ms: 5000000 };
  assert.deepEqual(rateLimitHeaders(v1({ limits: [shadow, slots, day] })), { "RateLimit-Limit": "1000", "RateLimit-Remaining": "990", "RateLimit-Reset": "5000" });
});

test("a denial with no wait (a disabled provider) has no Retry-After", () => {
  const h = rateLimitHeaders(v1({ allowed: false, reason: "provider_disabled", remaining_minute: 0, remaining_day: 0, retry_after_ms: 0 }));
  assert.equal(h["Retry-After"], undefined);
});
