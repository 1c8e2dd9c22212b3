// The connection to usaged: one socket, requests pipelined and matched to answers by msgid,
// per-call deadlines, reconnects with backoff (auth sent again first), bounded retries of log
// calls the daemon could not take yet, and notifications flushed on close().
//
// Every call is an Outgoing item: its request is encoded once (with a msgid slot patched at each
// send), waits in `queue` while there is no ready connection or the socket's buffer is full, and
// sits in `inFlight` under its msgid once written. `live` holds every call not yet finished, so
// that close() can wait for them and nothing is ever left hanging.

import { createConnection, type Socket } from "node:net";
import { EventEmitter } from "node:events";
import { Decoder, Encoder } from "@msgpack/msgpack";
import { UsagedError } from "./errors.js";
import { messageEnd } from "./frame.js";
import {
  fromWireCheck,
  fromWirePing,
  fromWireSettle,
  fromWireUsage,
  toWireEvents,
  toWireMap,
  type CheckParams,
  type CheckResult,
  type LogResult,
  type PingResult,
  type PromptEvent,
  type SettleParams,
  type SettleResult,
  type UsageEvent,
  type UsageParams,
  type UsageResult,
} from "./wire.js";

export interface Timeouts {
  /** check (default 1000 ms). */
  check: number;
  /** log_usage and log_prompt requests, retries included (default 10000 ms). */
  log: number;
  /** ping, auth, settle, usage, stats and raw requests (default 5000 ms). */
  other: number;
}

export interface ConnectOptions {
  /** The daemon's Unix socket (default /run/usaged/usaged.sock when no host is given). */
  path?: string;
  /** The daemon's TCP listener. */
  host?: string;
  port?: number;
  /** auth.token_file's token, sent first on every connection. */
  token?: string;
  timeouts?: Partial<Timeouts>;
  /** How long one connection attempt (and its auth) may take (default 5000 ms). */
  connectTimeoutMs?: number;
  /** Backoff between reconnects (default 50 ms doubling to 5000 ms), or false: no reconnect. */
  reconnect?: { minDelayMs?: number; maxDelayMs?: number } | false;
  /** How many times a log request refused with overloaded/unavailable is sent again (default 5). */
  logRetries?: number;
  /** The daemon's listen.max_message_bytes: larger requests fail with too_large, unsent (default 1 MiB). */
  maxMessageBytes?: number;
  /** Requests awaiting an answer at once; more wait in the client's queue (default 65536). */
  maxInFlight?: number;
  /** Calls and notifications the client holds while it cannot send them (default 100000). */
  maxQueued?: number;
  /** How long close() waits for answers and queued notifications (default 5000 ms). */
  closeTimeoutMs?: number;
}

export interface CallOptions {
  /** This call's deadline, instead of the default for its method. */
  timeoutMs?: number;
}

export interface LogOptions extends CallOptions {
  /** `durable`: answer once stored in PostgreSQL or fsync'd to the spool. Default: the daemon's. */
  ack?: "queued" | "durable";
}

export const DEFAULT_PATH = "/run/usaged/usaged.sock";
const DEFAULT_TIMEOUTS: Timeouts = { check: 1000, log: 10000, other: 5000 };
const HIGH_WATER = 4 << 20; // bytes the socket may buffer before the queue holds the rest
const MAX_INPUT = 64 << 20; // an answer larger than this is not usaged's: the stream is broken
const MSGID_AT = 3; // requests are encoded as [0, uint32 msgid, ...]: 0x94 0x00 0xce <4 bytes>

interface Outgoing {
  bytes: Uint8Array; // the encoded message; a request's msgid is patched in at each send
  request: boolean; // false: a notification
  call: Call | null; // a request's call; null once it ended (then it is not sent)
}

interface Call {
  method: string;
  msgid: number;
  retriesLeft: number;
  deadline: number; // Date.now() ms
  timer: NodeJS.Timeout | null;
  retryTimer: NodeJS.Timeout | null;
  out: Outgoing;
  resolve(result: unknown): void;
  reject(err: UsagedError): void;
}

type State = "connecting" | "ready" | "down" | "closed";

export class UsagedClient extends EventEmitter {
  private readonly opts: ConnectOptions;
  private readonly timeouts: Timeouts;
  private readonly encoder = new Encoder({ ignoreUndefined: true });
  private readonly decoder = new Decoder();
  private sock: Socket | null = null;
  private state: State = "down";
  private closing = false;
  private input: Buffer | null = null;
  private notifyError: unknown = null; // the daemon's `error` notification on this connection
  private readonly queue: Outgoing[] = [];
  private queueHead = 0;
  private readonly inFlight = new Map<number, Call>();
  private readonly live = new Set<Call>();
  private nextMsgid = 1;
  private pumpScheduled = false;
  private attempt = 0;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private idleWaiters: Array<() => void> = [];
  private firstConnect: { resolve(): void; reject(e: UsagedError): void } | null = null;
  // Set once a connection attempt has failed, until a connection is ready again: requests made
  // meanwhile fail at once with it (`closed`); notifications wait for the next connection.
  private away: UsagedError | null = null;
  // Set when the connection closed and `reconnect` is false: every later call fails with it.
  private lost: UsagedError | null = null;
  private dropped = 0; // notifications discarded when the connection was lost for good
  private closed: Promise<number> | null = null;

  /** Use connect(); the constructor does not open the connection. */
  constructor(opts: ConnectOptions = {}) {
    super();
    this.opts = opts;
    this.timeouts = { ...DEFAULT_TIMEOUTS, ...opts.timeouts };
  }

  /** Opens the first connection (and sends auth): resolves once the daemon answered it. Called
   * once, by connect(). */
  start(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.firstConnect = { resolve, reject };
      this.open();
    });
  }

  // ---- the API ----

  async ping(opts?: CallOptions): Promise<PingResult> {
    return fromWirePing(await this.call("ping", [], this.timeouts.other, 0, opts));
  }

  async check(params: CheckParams, opts?: CallOptions): Promise<CheckResult> {
    return fromWireCheck(await this.call("check", [toWireMap(params)], this.timeouts.check, 0, opts));
  }

  async settle(params: SettleParams, opts?: CallOptions): Promise<SettleResult> {
    return fromWireSettle(
      await this.call("settle", [toWireMap(params)], this.timeouts.other, 0, opts),
    );
  }

  async usage(params: UsageParams, opts?: CallOptions): Promise<UsageResult> {
    return fromWireUsage(await this.call("usage", [toWireMap(params)], this.timeouts.other, 0, opts));
  }

  /** The daemon's counters, as it gives them (snake_case keys: see docs/operations.md). */
  stats(opts?: CallOptions): Promise<Record<string, unknown>> {
    return this.call("stats", [], this.timeouts.other, 0, opts) as Promise<Record<string, unknown>>;
  }

  logUsage(events: readonly UsageEvent[], opts?: LogOptions): Promise<LogResult> {
    return this.log("log_usage", events, opts);
  }

  logPrompt(events: readonly PromptEvent[], opts?: LogOptions): Promise<LogResult> {
    return this.log("log_prompt", events, opts);
  }

  /** Fire and forget: sent as a notification; returns the ids the events were given. */
  logUsageNoWait(events: readonly UsageEvent[]): LogResult["ids"] {
    return this.notify("log_usage", events);
  }

  logPromptNoWait(events: readonly PromptEvent[]): LogResult["ids"] {
    return this.notify("log_prompt", events);
  }

  /** Any method, params as the wire has them; the result as it arrives. */
  request(method: string, params: unknown[], opts?: CallOptions): Promise<unknown> {
    return this.call(method, params, this.timeouts.other, 0, opts);
  }

  /**
   * Stops taking calls, waits for the answers still due and until every queued notification is
   * written, then closes the connection, all within closeTimeoutMs. What is still unanswered then
   * fails with `closed`. Resolves with the number of notifications that could not be written
   * (0 unless the daemon stayed away for all of closeTimeoutMs, or the connection closed with
   * notifications queued under `reconnect: false`). Calling it again gives the same promise.
   */
  close(): Promise<number> {
    return (this.closed ??= this.shutdown());
  }

  private async shutdown(): Promise<number> {
    // closeTimeoutMs bounds all of it: the wait for answers and notifications, and the close of
    // the socket after them.
    const deadline = Date.now() + (this.opts.closeTimeoutMs ?? 5000);
    this.closing = true;
    this.reconnectTimer?.ref(); // queued notifications wait for the next connection
    if (!this.idle()) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.max(0, deadline - Date.now()));
        this.idleWaiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    this.state = "closed";
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    const unsent = this.dropped + this.queuedNotifications();
    this.dropped = 0;
    this.failAll(new UsagedError("closed", "the client was closed before the answer came"));
    const sock = this.sock;
    if (sock && !sock.destroyed) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => sock.destroy(), Math.max(0, deadline - Date.now()));
        sock.once("close", () => {
          clearTimeout(t);
          resolve();
        });
        sock.end();
      });
    }
    return unsent;
  }

  // ---- calls ----

  private log(method: string, events: readonly object[], opts?: LogOptions): Promise<LogResult> {
    let wire: unknown[];
    let ids: LogResult["ids"];
    try {
      ({ wire, ids } = toWireEvents(events));
    } catch (e) {
      return Promise.reject(e);
    }
    const params: unknown[] = opts?.ack === undefined ? [wire] : [wire, { ack: opts.ack }];
    const retries = this.opts.logRetries ?? 5;
    return this.call(method, params, this.timeouts.log, retries, opts).then((r) => {
      const m = (r ?? {}) as { accepted?: unknown };
      return { accepted: typeof m.accepted === "number" ? m.accepted : 0, ids };
    });
  }

  private notify(method: string, events: readonly object[]): LogResult["ids"] {
    const refused = this.refusal(false);
    if (refused) throw refused;
    const { wire, ids } = toWireEvents(events);
    const bytes = this.encoder.encode([2, method, [wire]]);
    this.checkSize(bytes);
    this.enqueue({ bytes, request: false, call: null });
    return ids;
  }

  private checkSize(bytes: Uint8Array): void {
    const max = this.opts.maxMessageBytes ?? 1 << 20;
    if (bytes.length > max)
      throw new UsagedError("too_large", `the message is ${bytes.length} bytes, over ${max}`);
  }

  private enqueue(out: Outgoing): void {
    if (this.queue.length - this.queueHead >= (this.opts.maxQueued ?? 100000))
      throw new UsagedError("overloaded", "the client's queue is full", { retryAfterMs: 100 });
    this.queue.push(out);
    this.schedulePump();
  }

  private call(
    method: string,
    params: unknown[],
    dflt: number,
    retries: number,
    opts?: CallOptions,
  ): Promise<unknown> {
    const refused = this.refusal(true);
    // Rejected from the next turn of the event loop, not synchronously: a caller that retries in
    // a loop must not starve the reconnect it waits for.
    if (refused) return new Promise((_, reject) => setImmediate(reject, refused));
    let bytes: Uint8Array;
    try {
      bytes = this.encoder.encode([0, 0xffffffff, method, params]);
      this.checkSize(bytes);
    } catch (e) {
      return Promise.reject(
        e instanceof UsagedError ? e : new UsagedError("invalid_field", String(e), { cause: e }),
      );
    }
    const timeoutMs = opts?.timeoutMs ?? dflt;
    return new Promise((resolve, reject) => {
      const call: Call = {
        method,
        msgid: 0,
        retriesLeft: retries,
        deadline: Date.now() + timeoutMs,
        timer: null,
        retryTimer: null,
        out: { bytes, request: true, call: null },
        resolve,
        reject,
      };
      call.out.call = call;
      try {
        this.enqueue(call.out);
      } catch (e) {
        reject(e as UsagedError);
        return;
      }
      this.live.add(call);
      call.timer = setTimeout(() => {
        this.finish(call, new UsagedError("timeout", `${method}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
    });
  }

  /**
   * Why a call made now fails at once, or null when it may be queued: the client is closed, its
   * connection is lost for good (`reconnect: false`), or (requests only) the daemon is away.
   */
  private refusal(request: boolean): UsagedError | null {
    const why = this.closing
      ? new UsagedError("closed", "the client is closed")
      : (this.lost ?? (request ? this.away : null));
    // A new error each time, so that each call's stack is its own.
    return why === null ? null : new UsagedError(why.code, why.message, { cause: why.cause });
  }

  /** Ends a call: with an error, or with its result. A call ends once; later news is dropped. */
  private finish(call: Call, err: UsagedError | null, result?: unknown): void {
    if (!this.live.delete(call)) return;
    if (call.timer) clearTimeout(call.timer);
    if (call.retryTimer) clearTimeout(call.retryTimer);
    if (call.msgid !== 0 && this.inFlight.get(call.msgid) === call) this.inFlight.delete(call.msgid);
    call.out.call = null; // if it still waits in the queue, it is skipped there
    if (err) call.reject(err);
    else call.resolve(result);
    this.checkIdle();
  }

  private answer(call: Call, error: unknown, result: unknown): void {
    if (error === null || error === undefined) {
      this.finish(call, null, result);
      return;
    }
    const err = UsagedError.fromWire(error);
    const wait = err.retryAfterMs ?? 0;
    if (
      (err.code === "overloaded" || err.code === "unavailable") &&
      call.retriesLeft > 0 &&
      Date.now() + wait < call.deadline &&
      !this.closing
    ) {
      call.retriesLeft--;
      call.retryTimer = setTimeout(() => {
        call.retryTimer = null;
        if (!this.live.has(call)) return;
        const refused = this.refusal(true);
        if (refused) {
          this.finish(call, refused);
          return;
        }
        const out: Outgoing = { bytes: call.out.bytes, request: true, call };
        call.out = out;
        this.queue.push(out);
        this.schedulePump();
      }, Math.max(wait, 10));
      return;
    }
    this.finish(call, err);
  }

  // ---- writing ----

  private schedulePump(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    queueMicrotask(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  /** Writes what the queue holds while the connection is ready and has room. */
  private pump(): void {
    const sock = this.sock;
    if (this.state !== "ready" || !sock) return;
    const maxInFlight = this.opts.maxInFlight ?? 65536;
    const parts: Uint8Array[] = [];
    let bytes = 0;
    while (this.queueHead < this.queue.length) {
      if (sock.writableLength + bytes >= HIGH_WATER) break;
      const out = this.queue[this.queueHead]!;
      const call = out.call;
      if (call !== null) {
        if (this.inFlight.size >= maxInFlight) break;
        call.msgid = this.allocMsgid();
        this.inFlight.set(call.msgid, call);
        setMsgid(out.bytes, call.msgid);
      } else if (out.request) {
        // a request whose call already ended (timed out while queued): nothing to send
        this.queueHead++;
        continue;
      }
      this.queueHead++;
      parts.push(out.bytes);
      bytes += out.bytes.length;
    }
    if (this.queueHead === this.queue.length) {
      this.queue.length = 0;
      this.queueHead = 0;
    } else if (this.queueHead > 1024 && this.queueHead * 2 > this.queue.length) {
      this.queue.splice(0, this.queueHead);
      this.queueHead = 0;
    }
    if (parts.length === 1) sock.write(parts[0]!);
    else if (parts.length > 1) sock.write(Buffer.concat(parts, bytes));
    this.checkIdle();
  }

  private allocMsgid(): number {
    for (;;) {
      const id = this.nextMsgid;
      this.nextMsgid = id === 0xffffffff ? 1 : id + 1;
      if (!this.inFlight.has(id)) return id;
    }
  }

  // ---- the connection ----

  private open(): void {
    this.reconnectTimer = null;
    this.state = "connecting";
    this.notifyError = null;
    this.input = null;
    const o = this.opts;
    const sock =
      o.host !== undefined
        ? createConnection({ host: o.host, port: o.port ?? 7878 })
        : createConnection({ path: o.path ?? DEFAULT_PATH });
    this.sock = sock;
    sock.setNoDelay?.(true);
    const limit = o.connectTimeoutMs ?? 5000;
    const connectTimer = setTimeout(() => {
      sock.destroy(new UsagedError("timeout", `no connection to usaged within ${limit} ms`));
    }, limit);
    let failure: unknown = null;
    // The handshake waits until the loop has polled the new socket once: a daemon that refuses
    // the connection (too many connections, or stopping) says why and closes at once, and a write
    // into that closed socket would fail (EPIPE) before its reason is read. The connect callback
    // runs in the poll phase; a second setImmediate runs after the next poll.
    sock.on("connect", () => setImmediate(() => setImmediate(() => {
      if (this.sock === sock && !sock.destroyed) this.handshake(sock, connectTimer);
    })));
    sock.on("data", (chunk: Buffer) => this.onData(sock, chunk));
    sock.on("drain", () => this.schedulePump());
    sock.on("error", (e) => {
      failure = e;
    });
    sock.on("close", () => {
      clearTimeout(connectTimer);
      this.onClose(sock, failure);
    });
  }

  /** auth (or ping, without a token) before anything else: its answer makes the connection ready. */
  private handshake(sock: Socket, connectTimer: NodeJS.Timeout): void {
    const token = this.opts.token;
    const method = token !== undefined ? "auth" : "ping";
    const bytes = this.encoder.encode([0, 0xffffffff, method, token !== undefined ? [token] : []]);
    const call: Call = {
      method,
      msgid: this.allocMsgid(),
      retriesLeft: 0,
      deadline: 0,
      timer: null,
      retryTimer: null,
      out: { bytes, request: true, call: null },
      resolve: () => {
        clearTimeout(connectTimer);
        if (this.sock !== sock) return;
        this.state = "ready";
        this.away = null;
        this.attempt = 0;
        this.emit("connect");
        const first = this.firstConnect;
        this.firstConnect = null;
        first?.resolve();
        this.schedulePump();
      },
      reject: (err) => {
        clearTimeout(connectTimer);
        if (this.state !== "closed") this.emit("handshakeError", err);
        if (this.firstConnect) {
          const first = this.firstConnect;
          this.firstConnect = null;
          this.closing = true;
          this.state = "closed";
          first.reject(err);
        }
        // With its error, so that the calls waiting for this connection fail with it (a token
        // refused is unauthorized), not with a bare closed.
        sock.destroy(err);
      },
    };
    call.out.call = call;
    setMsgid(bytes, call.msgid);
    this.live.add(call);
    this.inFlight.set(call.msgid, call);
    sock.write(bytes);
  }

  private onData(sock: Socket, chunk: Buffer): void {
    if (this.sock !== sock) return;
    const buf = this.input ? Buffer.concat([this.input, chunk]) : chunk;
    let pos = 0;
    for (;;) {
      const end = messageEnd(buf, pos);
      if (end < 0) break;
      let msg: unknown;
      try {
        msg = this.decoder.decode(buf.subarray(pos, end));
      } catch (e) {
        sock.destroy(new UsagedError("bad_request", `an answer that is not MessagePack: ${e}`));
        return;
      }
      pos = end;
      this.dispatch(msg);
      if (this.sock !== sock) return;
    }
    this.input = pos < buf.length ? buf.subarray(pos) : null;
    if (this.input && this.input.length > MAX_INPUT) {
      sock.destroy(new UsagedError("too_large", "an answer over 64 MiB: not usaged's"));
    }
  }

  private dispatch(msg: unknown): void {
    if (!Array.isArray(msg)) return;
    if (msg[0] === 1 && msg.length === 4) {
      // An error notification explains a close only when the close follows it directly.
      this.notifyError = null;
      const call = this.inFlight.get(msg[1] as number);
      if (!call) return; // an answer to a call that timed out
      this.inFlight.delete(call.msgid);
      call.msgid = 0;
      if (call.deadline === 0) {
        // the handshake
        this.live.delete(call);
        if (msg[2] === null || msg[2] === undefined) call.resolve(msg[3]);
        else call.reject(UsagedError.fromWire(msg[2]));
        return;
      }
      this.answer(call, msg[2], msg[3]);
      this.schedulePump();
    } else if (msg[0] === 2 && msg[1] === "error" && Array.isArray(msg[2])) {
      this.notifyError = msg[2][0];
    }
  }

  private onClose(sock: Socket, failure: unknown): void {
    if (this.sock !== sock) return;
    this.sock = null;
    const wasReady = this.state === "ready";
    const err =
      this.notifyError !== null
        ? UsagedError.fromWire(this.notifyError)
        : failure instanceof UsagedError
          ? failure
          : new UsagedError(
              "closed",
              wasReady
                ? "the connection to usaged closed before the answer came"
                : `cannot connect to usaged: ${failure instanceof Error ? failure.message : "closed"}`,
              { cause: failure ?? undefined },
            );
    for (const call of [...this.inFlight.values()]) {
      this.inFlight.delete(call.msgid);
      call.msgid = 0;
      if (call.deadline === 0) {
        this.live.delete(call);
        call.reject(err);
      } else this.finish(call, err);
    }
    if (this.state === "closed") return;
    this.state = "down";
    if (wasReady) this.emit("disconnect", err);
    // No connection could be made: requests waiting for one fail now rather than at their
    // deadline, so that a caller learns at once that the daemon is away. Notifications stay
    // queued (up to maxQueued) for the next connection.
    if (!wasReady) for (const out of this.queue.slice(this.queueHead)) if (out.call) this.finish(out.call, err);
    if (this.firstConnect) {
      const first = this.firstConnect;
      this.firstConnect = null;
      this.state = "closed";
      this.closing = true;
      first.reject(err);
      return;
    }
    const rc = this.opts.reconnect;
    if (rc === false) {
      // No connection will be made again: every call from now on fails at once.
      this.state = "closed";
      this.lost = new UsagedError(
        "closed",
        `the connection to usaged closed and reconnect is off (${err.message})`,
        { cause: err },
      );
      this.dropped += this.queuedNotifications();
      this.failAll(err);
      return;
    }
    // An attempt failed: the daemon is away. Until a connection is made again, requests fail at
    // once rather than wait for an attempt that is not expected to succeed either.
    if (!wasReady) {
      const why = `usaged is away; the last connection attempt failed: ${err.message}`;
      this.away = new UsagedError("closed", why, { cause: err });
    }
    const min = rc?.minDelayMs ?? 50;
    const max = rc?.maxDelayMs ?? 5000;
    const delay = Math.min(max, min * 2 ** Math.min(this.attempt, 20));
    this.attempt++;
    this.reconnectTimer = setTimeout(() => this.open(), delay * (0.5 + Math.random() / 2));
    // While calls wait, their timers keep the process alive; an idle client does not.
    if (this.idle() && !this.closing) this.reconnectTimer.unref();
  }

  private failAll(err: UsagedError): void {
    for (const call of [...this.live]) this.finish(call, err);
    this.queue.length = 0;
    this.queueHead = 0;
    this.checkIdle();
  }

  private queuedNotifications(): number {
    let n = 0;
    for (let i = this.queueHead; i < this.queue.length; i++) if (!this.queue[i]!.request) n++;
    return n;
  }

  private idle(): boolean {
    return this.live.size === 0 && this.queueHead >= this.queue.length;
  }

  private checkIdle(): void {
    if (this.idleWaiters.length === 0 || !this.idle()) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}

/** Writes a request's msgid into its encoded bytes (big-endian uint32, as msgpack has it). */
function setMsgid(bytes: Uint8Array, msgid: number): void {
  bytes[MSGID_AT] = msgid >>> 24;
  bytes[MSGID_AT + 1] = (msgid >>> 16) & 0xff;
  bytes[MSGID_AT + 2] = (msgid >>> 8) & 0xff;
  bytes[MSGID_AT + 3] = msgid & 0xff;
}

/** Connects to usaged; resolves once the daemon answered the first auth (or ping). */
export async function connect(opts: ConnectOptions = {}): Promise<UsagedClient> {
  const client = new UsagedClient(opts);
  await client.start();
  return client;
}
