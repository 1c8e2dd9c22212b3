// What the Node.js tools of bench/compare share (rlf-bench.js, client-bench.mjs): the command
// line, the same log-bucketed latency histogram as bench/hist.c (microseconds), and
// usage-bench's user ids.
'use strict';

// The same log-bucketed histogram as bench/hist.c, over microseconds.
class Hist {
  constructor() { this.counts = new Float64Array(128 + 41 * 64); this.total = 0; this.max = 0; this.sum = 0; }
  index(v) {
    if (v < 128) return v;
    const msb = Math.floor(Math.log2(v));
    const shift = msb - 6;
    return 128 + (msb - 7) * 64 + (Math.floor(v / 2 ** shift) - 64);
  }
  upper(i) {
    if (i < 128) return i;
    const octave = Math.floor((i - 128) / 64), sub = (i - 128) % 64, shift = octave + 1;
    return (64 + sub) * 2 ** shift + 2 ** shift - 1;
  }
  record(us) {
    const v = Math.max(0, Math.round(us));
    this.counts[Math.min(this.index(v), this.counts.length - 1)]++;
    this.total++; this.sum += v; if (v > this.max) this.max = v;
  }
  quantile(q) {
    if (!this.total) return 0;
    const rank = Math.min(this.total, Math.max(1, Math.round(q * this.total)));
    let seen = 0;
    for (let i = 0; i < this.counts.length; i++) {
      seen += this.counts[i];
      if (seen >= rank) return Math.min(this.upper(i), this.max);
    }
    return this.max;
  }
}

/** usage-bench's users: b0000000-0000-4000-8000-<i as 12 hex digits>. */
function userId(i) {
  return 'b0000000-0000-4000-8000-' + i.toString(16).padStart(12, '0');
}

/**
 * `--per-minute 5` -> { perMinute: 5 }: every option is one of `defaults`' keys, in kebab case;
 * booleans are flags, numbers are read as numbers, anything else as a string.
 */
function parseArgs(argv, defaults) {
  const o = { ...defaults };
  for (let i = 2; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!argv[i].startsWith('--') || !(key in defaults)) throw new Error(`unknown argument ${argv[i]}`);
    if (typeof defaults[key] === 'boolean') o[key] = true;
    else if (typeof defaults[key] === 'number') o[key] = Number(argv[++i]);
    else o[key] = argv[++i];
  }
  return o;
}

/**
 * Lets the load run `o.warmup` s, then records for `o.duration` s (record(true) ... record(false));
 * returns the window's length and the CPU this process used in it, in seconds.
 */
async function measure(o, record) {
  const sleep = (s) => new Promise((r) => setTimeout(r, s * 1000));
  await sleep(o.warmup);
  record(true);
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await sleep(o.duration);
  record(false);
  const cpu = process.cpuUsage(cpu0);
  return { window: Number(process.hrtime.bigint() - t0) / 1e9, cpuS: (cpu.user + cpu.system) / 1e6 };
}

module.exports = { Hist, measure, parseArgs, userId };
