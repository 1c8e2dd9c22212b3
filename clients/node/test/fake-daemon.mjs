// A stand-in for usaged in the unit tests: a Unix socket that decodes MessagePack-RPC messages and
// lets each test answer them as it likes (late, out of order, with errors, or by closing).
import { createServer } from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { decode, encode } from "@msgpack/msgpack";
import { messageEnd } from "../dist/esm/frame.js";

export class FakeDaemon {
  /**
   * onMessage(msg, conn): called for every message received; conn.reply(msgid, err, result).
   * `path`: listen where an earlier FakeDaemon listened (a daemon that comes back).
   * `allowHalfOpen`: the daemon's side stays open when the client ends its own (as a daemon that
   * is stopped never closes it).
   */
  constructor(onMessage, path = null, { allowHalfOpen = false } = {}) {
    this.dir = path ? null : mkdtempSync(join(tmpdir(), "usaged-fake-"));
    this.path = path ?? join(this.dir, "fake.sock");
    this.onMessage = onMessage;
    this.messages = []; // every message received, in order: [connection number, msg]
    this.conns = new Set();
    this.accepted = 0;
    this.waiters = [];
    this.server = createServer({ allowHalfOpen }, (sock) => this.accept(sock));
  }

  listen() {
    return new Promise((resolve) => this.server.listen(this.path, () => resolve(this)));
  }

  accept(sock) {
    const n = ++this.accepted;
    const conn = {
      n,
      sock,
      reply: (msgid, err, result) => sock.write(encode([1, msgid, err, result ?? null])),
      notify: (method, params) => sock.write(encode([2, method, params])),
    };
    this.conns.add(conn);
    let input = Buffer.alloc(0);
    sock.on("data", (chunk) => {
      input = Buffer.concat([input, chunk]);
      let pos = 0;
      for (let end; (end = messageEnd(input, pos)) >= 0; pos = end) {
        const msg = decode(input.subarray(pos, end));
        this.messages.push([n, msg]);
        this.onMessage(msg, conn);
      }
      input = input.subarray(pos);
      this.wake();
    });
    sock.on("error", () => {});
    sock.on("close", () => {
      this.conns.delete(conn);
      this.wake();
    });
    this.wake();
  }

  wake() {
    for (const w of this.waiters.splice(0)) w();
  }

  /** Resolves once cond() holds; checked after every message, connection and close. */
  async until(cond) {
    while (!cond()) await new Promise((r) => this.waiters.push(r));
  }

  /** Messages of one method received so far. */
  of(method) {
    return this.messages
      .map(([, m]) => m)
      .filter((m) => (m[0] === 0 && m[2] === method) || (m[0] === 2 && m[1] === method));
  }

  dropAll() {
    for (const c of this.conns) c.sock.destroy();
  }

  /** Stops listening and drops every connection; `keepDir` leaves the path to a successor. */
  async stop(keepDir = false) {
    this.dropAll();
    if (this.server.listening) await new Promise((r) => this.server.close(r));
    if (this.dir && !keepDir) rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The usual answers: ping, auth and stats are answered; everything else by `handle`. */
export function standard(handle = () => {}) {
  return (msg, conn) => {
    if (msg[0] !== 0) return handle(msg, conn);
    const [, msgid, method] = msg;
    if (method === "ping") conn.reply(msgid, null, { version: "fake", protocol: 1, uptime_ms: 1 });
    else if (method === "auth") conn.reply(msgid, null, true);
    else handle(msg, conn);
  };
}
