// The one error type the client throws: the daemon's error codes (docs/protocol.md, "Errors"),
// plus `timeout` and `closed`, which the client itself decides.

/** Every code a UsagedError can carry. */
export type UsagedErrorCode =
  | "bad_request"
  | "invalid_field"
  | "unknown_method"
  | "unknown_provider"
  | "unknown_reservation"
  | "unauthorized"
  | "overloaded"
  | "unavailable"
  | "too_large"
  | "shutting_down"
  | "internal"
  | "timeout"
  | "closed";

/** The error map the daemon sends, as it arrives (snake_case). */
export interface WireError {
  code?: unknown;
  message?: unknown;
  field?: unknown;
  index?: unknown;
  retry_after_ms?: unknown;
}

export interface UsagedErrorInit {
  field?: string | null;
  index?: number | null;
  retryAfterMs?: number | null;
  cause?: unknown;
}

export class UsagedError extends Error {
  /** The protocol's code, or `timeout` / `closed`. Codes a newer daemon adds arrive as they are. */
  readonly code: UsagedErrorCode | (string & {});
  /** invalid_field: the first bad field, in the caller's camelCase ("" when an event is not a map). */
  readonly field: string | null;
  /** invalid_field of a log call: the position of the first bad event in the array given. */
  readonly index: number | null;
  /** overloaded / unavailable: how long to wait before a retry can succeed. */
  readonly retryAfterMs: number | null;

  constructor(code: string, message: string, init: UsagedErrorInit = {}) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = "UsagedError";
    this.code = code;
    this.field = init.field ?? null;
    this.index = init.index ?? null;
    this.retryAfterMs = init.retryAfterMs ?? null;
  }

  /** An error of the daemon's, from its wire map. */
  static fromWire(e: unknown): UsagedError {
    const w = (typeof e === "object" && e !== null ? e : {}) as WireError;
    const code = typeof w.code === "string" ? w.code : "internal";
    const message = typeof w.message === "string" ? w.message : `usaged error ${code}`;
    return new UsagedError(code, message, {
      field: typeof w.field === "string" ? snakeToCamel(w.field) : null,
      index: typeof w.index === "number" ? w.index : null,
      retryAfterMs: typeof w.retry_after_ms === "number" ? w.retry_after_ms : null,
    });
  }
}

/** `status_code` -> `statusCode`. */
export function snakeToCamel(s: string): string {
  return s.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase());
}

const SNAKE = new Map<string, string>(); // the keys callers use are few: convert each once

/** `statusCode` -> `status_code`. */
export function camelToSnake(s: string): string {
  let snake = SNAKE.get(s);
  if (snake === undefined) {
    snake = s.replace(/[A-Z]/g, (c) => "_" + c.toLowerCase());
    if (SNAKE.size < 1024) SNAKE.set(s, snake);
  }
  return snake;
}
