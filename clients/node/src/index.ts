// usaged-client: the TypeScript client of usaged (docs/protocol.md).
export { connect, UsagedClient, DEFAULT_PATH } from "./client.js";
export type { ConnectOptions, CallOptions, LogOptions, Timeouts } from "./client.js";
export { UsagedError } from "./errors.js";
export type { UsagedErrorCode } from "./errors.js";
export { rateLimitHeaders } from "./headers.js";
export { uuidv7 } from "./uuid.js";
export type {
  CheckParams,
  CheckResult,
  Decimal,
  LimitState,
  LogResult,
  PingResult,
  PromptEvent,
  SettleParams,
  SettleResult,
  Timestamp,
  UsageEvent,
  UsageParams,
  UsageResult,
  Uuid,
} from "./wire.js";
