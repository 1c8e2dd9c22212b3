// HTTP headers from a check's answer, in the shape of the IETF RateLimit header fields draft
// (RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset in seconds) plus Retry-After when the
// check was denied.

import type { CheckResult, LimitState } from "./wire.js";

interface Window {
  limit: number | string;
  remaining: number | string;
  resetMs: number;
}

function fraction(w: Window): number {
  const limit = Number(w.limit);
  return limit > 0 ? Number(w.remaining) / limit : 0;
}

function fromState(s: LimitState): Window | null {
  if (s.limit === null || s.remaining === null) return null;
  return { limit: s.limit, remaining: s.remaining, resetMs: s.resetMs ?? 0 };
}

/**
 * The window a client should be told about: the one that denied; else, of every limited
 * window, the one with the least of its quota left (the sooner reset on a tie). Shadow rules
 * never deny and are not told about; a concurrent rule has no window (it is told only when it
 * denied).
 */
function binding(r: CheckResult): Window | null {
  if (!r.allowed && r.deniedBy) {
    const w = fromState(r.deniedBy);
    if (w) return w;
  }
  const windows: Window[] = [];
  for (const s of r.limits) {
    if (s.shadow || s.window === null) continue;
    const w = fromState(s);
    if (w) windows.push(w);
  }
  if (windows.length === 0) {
    if (r.limitMinute !== null && r.remainingMinute !== null)
      windows.push({ limit: r.limitMinute, remaining: r.remainingMinute, resetMs: r.resetMinuteMs });
    if (r.limitDay !== null && r.remainingDay !== null)
      windows.push({ limit: r.limitDay, remaining: r.remainingDay, resetMs: r.resetDayMs });
  }
  let best: Window | null = null;
  for (const w of windows) {
    if (
      best === null ||
      fraction(w) < fraction(best) ||
      (fraction(w) === fraction(best) && w.resetMs < best.resetMs)
    )
      best = w;
  }
  return best;
}

function seconds(ms: number): string {
  return String(Math.max(0, Math.ceil(ms / 1000)));
}

/** Header name -> value for an HTTP answer; empty when no limit applies and the check was allowed. */
export function rateLimitHeaders(r: CheckResult): Record<string, string> {
  const h: Record<string, string> = {};
  const w = binding(r);
  if (w) {
    h["RateLimit-Limit"] = String(w.limit);
    h["RateLimit-Remaining"] = String(w.remaining);
    h["RateLimit-Reset"] = seconds(w.resetMs);
  }
  // A denial with no wait (a disabled provider) has nothing to retry after.
  if (!r.allowed && r.retryAfterMs > 0) h["Retry-After"] = seconds(r.retryAfterMs);
  return h;
}
