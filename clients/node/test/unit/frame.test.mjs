import { test } from "node:test";
import assert from "node:assert/strict";
import { encode } from "@msgpack/msgpack";
import { messageEnd } from "../../dist/esm/frame.js";

const samples = [
  0, 127, -1, -33, 200, 70000, 2 ** 32 + 5, -(2 ** 40), 1.5, null, true, false,
  "", "a".repeat(31), "b".repeat(32), "c".repeat(300), "d".repeat(70000),
  new Uint8Array(3), new Uint8Array(300), new Uint8Array(70000),
  [], [1, [2, [3, [4]]]], new Array(20).fill("x"), new Array(70000).fill(1),
  {}, { a: 1, b: { c: [1, 2, { d: null }] } }, Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`k${i}`, i])),
  new Date(1700000000123), new Date(0), new Date(2 ** 35 * 1000),
  [1, 7, { code: "invalid_field", message: "m", field: "user_id", index: 3 }, null],
];

test("messageEnd finds the end of every kind of object", () => {
  for (const v of samples) {
    const b = encode(v);
    assert.equal(messageEnd(b, 0), b.length, JSON.stringify(v)?.slice(0, 40));
  }
});

test("messageEnd answers -1 for every prefix of an object", () => {
  for (const v of samples) {
    const b = encode(v);
    const step = Math.max(1, Math.floor(b.length / 200));
    for (let cut = 0; cut < b.length; cut += step) assert.equal(messageEnd(b.subarray(0, cut), 0), -1);
    assert.equal(messageEnd(b.subarray(0, b.length - 1), 0), -1);
  }
});

test("messageEnd walks objects back to back from an offset", () => {
  const parts = samples.map((v) => encode(v));
  const all = Buffer.concat(parts);
  let pos = 0;
  for (const p of parts) {
    const end = messageEnd(all, pos);
    assert.equal(end, pos + p.length);
    pos = end;
  }
  assert.equal(messageEnd(all, pos), -1);
});
