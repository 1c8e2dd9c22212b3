// The mapping between the JavaScript API (camelCase, Dates, numbers or decimal strings) and the
// wire (docs/protocol.md: snake_case maps, the msgpack timestamp extension, decimal strings).
// Pure: no sockets, no clock but the one uuidv7 reads for ids. What the wire cannot carry (an
// Invalid Date, events that are not an array) is refused here with invalid_field, as the daemon
// refuses what it cannot take.

import { camelToSnake, UsagedError } from "./errors.js";
import { uuidv7 } from "./uuid.js";

/** A decimal amount: `"0.0035"` or `0.0035`. Answers always give strings. */
export type Decimal = string | number;
/** A uuid: the canonical string, or its 16 bytes. */
export type Uuid = string | Uint8Array;
/** A time: a Date (sent as the msgpack timestamp extension) or milliseconds since the epoch. */
export type Timestamp = Date | number;

export interface CheckParams {
  userId: Uuid;
  provider: string;
  model?: string | null;
  /** Requests to spend (default 1); 0 with no tokens and no spend is a peek. */
  cost?: number | null;
  /** Estimated tokens of the call (default 0). */
  tokens?: number | null;
  /** Estimated spend in USD, up to 6 decimal places (default 0). */
  spend?: Decimal | null;
}

/** One rule's state, as `check`, `usage` and `deniedBy` give it. */
export interface LimitState {
  dimension: "requests" | "tokens" | "spend" | "concurrent" | (string & {});
  window: "minute" | "hour" | "day" | "month" | null | (string & {});
  scope: "user" | "provider" | "model" | (string & {});
  /** null: unlimited. Spend values are decimal strings with 6 places. */
  limit: number | string | null;
  /** null for an unlimited rule, which is not counted. */
  used: number | string | null;
  remaining: number | string | null;
  resetMs: number | null;
  /** The provider and model the rule names (null: every one); given by `usage` and, where the
   * daemon sends them, by `check`. */
  provider?: string | null;
  model?: string | null;
  /** A shadow rule: counted and reported, never denying. */
  shadow?: boolean;
}

export interface CheckResult {
  allowed: boolean;
  reason: string | null;
  retryAfterMs: number;
  remainingMinute: number | null;
  remainingDay: number | null;
  limitMinute: number | null;
  limitDay: number | null;
  resetMinuteMs: number;
  resetDayMs: number;
  degraded: boolean;
  /** Settle it after the call when present. */
  reservation: string | null;
  limits: LimitState[];
  deniedBy: LimitState | null;
  shadowDeniedBy: LimitState | null;
}

export type SettleParams =
  | { reservation: string; tokens?: number | null; spend?: Decimal | null; cancel?: false | null }
  | { reservation: string; cancel: true };

export interface SettleResult {
  settled: boolean;
  duplicate: boolean;
}

export interface UsageParams {
  userId: Uuid;
  provider?: string | null;
  model?: string | null;
}

export interface UsageResult {
  /** Every rule that applies to the user, each naming its provider and model. */
  limits: LimitState[];
  /** Some of it was read without Redis (under the daemon's `limits.on_redis_error`). */
  degraded: boolean;
  /** The daemon reads at most 256 providers and models for one call: some were left out. */
  truncated: boolean;
}

export interface PingResult {
  version: string;
  protocol: number;
  uptimeMs: number;
}

export interface UsageEvent {
  id?: Uuid;
  userId: Uuid;
  provider: string;
  endpoint?: string | null;
  requestSize?: number | null;
  responseSize?: number | null;
  responseTimeMs?: number | null;
  statusCode?: number | null;
  errorMessage?: string | null;
  createdAt?: Timestamp | null;
}

export interface PromptEvent {
  id?: Uuid;
  userId: Uuid;
  frameworkId?: string | null;
  frameworkName?: string | null;
  model?: string | null;
  provider?: string | null;
  userInput?: string | null;
  aiResponse?: string | null;
  tone?: string | null;
  length?: string | null;
  temperature?: number | null;
  maxTokens?: number | null;
  processingTimeMs?: number | null;
  tokensUsed?: number | null;
  vibeCoding?: boolean | null;
  costUsd?: Decimal | null;
  status: "pending" | "completed" | "failed" | "cancelled";
  errorMessage?: string | null;
  errorCode?: string | null;
  createdAt?: Timestamp | null;
  /** A check's reservation: the daemon settles it with tokensUsed and costUsd. */
  reservation?: string | null;
}

export interface LogResult {
  accepted: number;
  /** The id each event was sent with, in order: the caller's, or the UUIDv7 the client gave it. */
  ids: Uuid[];
}

/**
 * A number as the decimal it prints as (shortest round trip), never in exponent form:
 * 1e-7 -> "0.0000001". Strings pass as they are; the daemon judges them.
 */
export function toDecimal(v: Decimal): string | number {
  if (typeof v !== "number" || !Number.isFinite(v)) return v;
  const s = String(v);
  const m = /^(-?)(\d)(?:\.(\d+))?e([+-]\d+)$/.exec(s);
  if (!m) return s;
  const [, sign, int, frac = "", expText] = m;
  const exp = Number(expText);
  const digits = int! + frac;
  if (exp < 0) return `${sign}0.${"0".repeat(-exp - 1)}${digits}`;
  const point = 1 + exp;
  return digits.length <= point
    ? sign + digits + "0".repeat(point - digits.length)
    : `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
}

const DECIMAL_FIELDS = new Set(["spend", "costUsd"]);

/**
 * One map of the caller's, with snake_case keys; undefined values are left out. An Invalid Date
 * (which MessagePack would carry as the epoch) is invalid_field naming its key and, for an event
 * of a log call, `index`, its position.
 */
export function toWireMap(obj: object, index: number | null = null): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const src = obj as Record<string, unknown>;
  for (const k in src) {
    if (!Object.prototype.hasOwnProperty.call(src, k)) continue;
    const v = src[k];
    if (v === undefined) continue;
    if (v instanceof Date && Number.isNaN(v.getTime())) {
      const where = index === null ? "" : ` (event ${index})`;
      throw new UsagedError("invalid_field", `${k} is an Invalid Date${where}`, { field: k, index });
    }
    out[camelToSnake(k)] = v !== null && DECIMAL_FIELDS.has(k) ? toDecimal(v as Decimal) : v;
  }
  return out;
}

/**
 * The events of a log call on the wire: each with an `id` (a new UUIDv7 when it has none), and
 * the ids in order. Events that are not an array are invalid_field naming `events`; an element
 * that is not an object is sent as it is, for the daemon to refuse with its index.
 */
export function toWireEvents(events: readonly object[]): { wire: unknown[]; ids: Uuid[] } {
  if (!Array.isArray(events)) {
    const got = events === null ? "null" : typeof events;
    throw new UsagedError("invalid_field", `events must be an array of events, not ${got}`, {
      field: "events",
    });
  }
  const wire: unknown[] = new Array(events.length);
  const ids: Uuid[] = new Array(events.length);
  for (let i = 0; i < events.length; i++) {
    const e = events[i];
    if (typeof e !== "object" || e === null || Array.isArray(e)) {
      wire[i] = e;
      continue;
    }
    const m = toWireMap(e, i);
    if (m.id === undefined || m.id === null) m.id = uuidv7();
    wire[i] = m;
    ids[i] = m.id as Uuid;
  }
  return { wire, ids };
}

function num(v: unknown, dflt: number): number {
  return typeof v === "number" ? v : typeof v === "bigint" ? Number(v) : dflt;
}

function numOrNull(v: unknown): number | null {
  return typeof v === "number" ? v : typeof v === "bigint" ? Number(v) : null;
}

function amount(v: unknown): number | string | null {
  return typeof v === "string" ? v : numOrNull(v);
}

function map(v: unknown): Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v)
    ? (v as Record<string, unknown>)
    : {};
}

export function fromWireLimit(v: unknown): LimitState {
  const m = map(v);
  return {
    dimension: String(m.dimension ?? ""),
    window: typeof m.window === "string" ? m.window : null,
    scope: String(m.scope ?? ""),
    limit: amount(m.limit),
    used: amount(m.used),
    remaining: amount(m.remaining),
    resetMs: numOrNull(m.reset_ms),
    ...("provider" in m ? { provider: typeof m.provider === "string" ? m.provider : null } : {}),
    ...("model" in m ? { model: typeof m.model === "string" ? m.model : null } : {}),
    ...(m.shadow === true ? { shadow: true } : {}),
  };
}

function limitOrNull(v: unknown): LimitState | null {
  return typeof v === "object" && v !== null ? fromWireLimit(v) : null;
}

function limitList(v: unknown): LimitState[] {
  return Array.isArray(v) ? v.map(fromWireLimit) : [];
}

export function fromWireCheck(v: unknown): CheckResult {
  const m = map(v);
  return {
    allowed: m.allowed === true,
    reason: typeof m.reason === "string" ? m.reason : null,
    retryAfterMs: num(m.retry_after_ms, 0),
    remainingMinute: numOrNull(m.remaining_minute),
    remainingDay: numOrNull(m.remaining_day),
    limitMinute: numOrNull(m.limit_minute),
    limitDay: numOrNull(m.limit_day),
    resetMinuteMs: num(m.reset_minute_ms, 0),
    resetDayMs: num(m.reset_day_ms, 0),
    degraded: m.degraded === true,
    reservation: typeof m.reservation === "string" ? m.reservation : null,
    limits: limitList(m.limits),
    deniedBy: limitOrNull(m.denied_by),
    shadowDeniedBy: limitOrNull(m.shadow_denied_by),
  };
}

export function fromWireSettle(v: unknown): SettleResult {
  const m = map(v);
  return { settled: m.settled === true, duplicate: m.duplicate === true };
}

export function fromWireUsage(v: unknown): UsageResult {
  const m = map(v);
  return {
    limits: limitList(m.limits),
    degraded: m.degraded === true,
    truncated: m.truncated === true,
  };
}

export function fromWirePing(v: unknown): PingResult {
  const m = map(v);
  return {
    version: String(m.version ?? ""),
    protocol: num(m.protocol, 0),
    uptimeMs: num(m.uptime_ms, 0),
  };
}
