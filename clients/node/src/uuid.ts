// UUIDv7 ids for events sent without one (RFC 9562): 48 bits of Unix milliseconds, then random
// bits. The daemon reads an event's created_at from its UUIDv7 id, so a retry of the same event
// after a lost ack carries the same (id, created_at) and is stored once.

import { randomFillSync } from "node:crypto";

const POOL_BYTES = 16 * 256;
let pool = Buffer.allocUnsafe(POOL_BYTES);
let poolPos = POOL_BYTES;
const HEX: string[] = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

/** A new UUIDv7 as a canonical 36-character string; `nowMs` for tests. */
export function uuidv7(nowMs: number = Date.now()): string {
  if (poolPos + 10 > POOL_BYTES) {
    pool = randomFillSync(Buffer.allocUnsafe(POOL_BYTES));
    poolPos = 0;
  }
  const b = new Uint8Array(16);
  const ms = Math.max(0, Math.floor(nowMs));
  const hi = Math.floor(ms / 0x100000000);
  const lo = ms >>> 0;
  b[0] = (hi >>> 8) & 0xff;
  b[1] = hi & 0xff;
  b[2] = (lo >>> 24) & 0xff;
  b[3] = (lo >>> 16) & 0xff;
  b[4] = (lo >>> 8) & 0xff;
  b[5] = lo & 0xff;
  for (let i = 6; i < 16; i++) b[i] = pool[poolPos++]!;
  b[6] = 0x70 | (b[6]! & 0x0f); // version 7
  b[8] = 0x80 | (b[8]! & 0x3f); // variant 10
  let s = "";
  for (let i = 0; i < 16; i++) {
    if (i === 4 || i === 6 || i === 8 || i === 10) s += "-";
    s += HEX[b[i]!];
  }
  return s;
}

/** The milliseconds inside a UUIDv7 string, or null when it is not one. */
export function uuidv7Time(id: string): number | null {
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/i.test(id)) return null;
  return parseInt(id.slice(0, 8) + id.slice(9, 13), 16);
}
