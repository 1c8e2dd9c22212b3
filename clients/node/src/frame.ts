// Where one MessagePack object ends in a buffer, without decoding it: the daemon's answers arrive
// back to back on a stream, split anywhere, and only whole objects are handed to the decoder.

/**
 * Returns the offset just past the one object that starts at `start`, or -1 when `buf` (up to
 * `end`) does not hold all of it yet. Iterative: nesting costs no stack.
 */
export function messageEnd(buf: Uint8Array, start: number, end: number = buf.length): number {
  let pos = start;
  let pending = 1; // objects still to skip, counting the elements of containers entered
  while (pending > 0) {
    if (pos >= end) return -1;
    const b = buf[pos]!;
    pending--;
    let head = 1; // header bytes
    let body = 0; // payload bytes after the header
    if (b <= 0x7f || b >= 0xe0 || (b >= 0xc0 && b <= 0xc3)) {
      // positive/negative fixint, nil, (never used), false, true
    } else if (b >= 0x80 && b <= 0x8f) {
      pending += (b & 0x0f) * 2;
    } else if (b >= 0x90 && b <= 0x9f) {
      pending += b & 0x0f;
    } else if (b >= 0xa0 && b <= 0xbf) {
      body = b & 0x1f;
    } else {
      const need = HEADER_BYTES[b - 0xc4]!;
      if (pos + need > end) return -1;
      const n = readLength(buf, pos + 1, b);
      head = need;
      switch (b) {
        case 0xc4: case 0xc5: case 0xc6: // bin 8/16/32
        case 0xd9: case 0xda: case 0xdb: // str 8/16/32
          body = n;
          break;
        case 0xc7: case 0xc8: case 0xc9: // ext 8/16/32: length, then the type byte
          body = n;
          break;
        case 0xdc: case 0xdd: // array 16/32
          pending += n;
          break;
        case 0xde: case 0xdf: // map 16/32
          pending += n * 2;
          break;
        default: // fixed-size numbers and fixext: HEADER_BYTES holds their whole size
          break;
      }
    }
    pos += head + body;
  }
  return pos > end ? -1 : pos;
}

// For the first bytes 0xc4..0xdf: the header's size (the whole object's for fixed-size types).
const HEADER_BYTES: readonly number[] = [
  2, 3, 5, // bin 8/16/32
  3, 4, 6, // ext 8/16/32 (length + type)
  5, 9, // float 32/64
  2, 3, 5, 9, // uint 8/16/32/64
  2, 3, 5, 9, // int 8/16/32/64
  3, 4, 6, 10, 18, // fixext 1/2/4/8/16 (type + data)
  2, 3, 5, // str 8/16/32
  3, 5, // array 16/32
  3, 5, // map 16/32
];

function readLength(buf: Uint8Array, at: number, b: number): number {
  switch (b) {
    case 0xc4: case 0xc7: case 0xd9:
      return buf[at]!;
    case 0xc5: case 0xc8: case 0xda: case 0xdc: case 0xde:
      return (buf[at]! << 8) | buf[at + 1]!;
    case 0xc6: case 0xc9: case 0xdb: case 0xdd: case 0xdf:
      return (buf[at]! * 0x1000000) + ((buf[at + 1]! << 16) | (buf[at + 2]! << 8) | buf[at + 3]!);
    default:
      return 0;
  }
}
