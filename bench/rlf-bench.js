#!/usr/bin/env node
// rlf-bench: the peer of usaged's `check` in bench/compare. What an app server does when it
// rate-limits in-process: rate-limiter-flexible with ioredis, two RateLimiterRedis limiters (per
// minute, per day) consumed together for every check, with many checks in flight at once.
//
//   node bench/rlf-bench.js --socket /path/redis.sock [--concurrency 256] [--duration 10]
//        [--warmup 1] [--users 1000] [--providers openai,...] [--json]
//
// Keys are the same (user, provider) pairs usage-bench checks (users b0000000-...-<i>). The
// limits are high enough that every check is allowed: this measures the cost of a check.
'use strict';

const Redis = require('ioredis');
const { RateLimiterRedis } = require('rate-limiter-flexible');

function parseArgs(argv) {
  const o = {
    socket: null, host: null, port: 6379, concurrency: 256, duration: 10, warmup: 1,
    users: 1000, providers: 'openai,anthropic,google,mistral,groq', json: false,
    perMinute: 2000000000, perDay: 2100000000,
  };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    const next = () => argv[++i];
    switch (a) {
      case '--socket': o.socket = next(); break;
      case '--host': o.host = next(); break;
      case '--port': o.port = Number(next()); break;
      case '--concurrency': o.concurrency = Number(next()); break;
      case '--duration': o.duration = Number(next()); break;
      case '--warmup': o.warmup = Number(next()); break;
      case '--users': o.users = Number(next()); break;
      case '--providers': o.providers = next(); break;
      case '--per-minute': o.perMinute = Number(next()); break;
      case '--per-day': o.perDay = Number(next()); break;
      case '--json': o.json = true; break;
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  if (!o.socket && !o.host) throw new Error('give --socket PATH or --host HOST');
  return o;
}

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

function userId(i) {
  return 'b0000000-0000-4000-8000-' + i.toString(16).padStart(12, '0');
}

async function main() {
  const o = parseArgs(process.argv);
  const redis = o.socket ? new Redis({ path: o.socket }) : new Redis({ host: o.host, port: o.port });
  const perMinute = new RateLimiterRedis({
    storeClient: redis, keyPrefix: 'rlf_minute', points: o.perMinute, duration: 60,
  });
  const perDay = new RateLimiterRedis({
    storeClient: redis, keyPrefix: 'rlf_day', points: o.perDay, duration: 86400,
  });
  const providers = o.providers.split(',');
  const keys = [];
  for (let u = 0; u < o.users; u++) for (const p of providers) keys.push(`${userId(u)}:${p}`);

  let recording = false, stopping = false;
  let allowed = 0, denied = 0, errors = 0;
  const hist = new Hist();

  async function worker() {
    while (!stopping) {
      const key = keys[(Math.random() * keys.length) | 0];
      const t0 = process.hrtime.bigint();
      let ok = false, err = false;
      try {
        // Both windows at once, as an app server guarding one AI call would.
        await Promise.all([perMinute.consume(key, 1), perDay.consume(key, 1)]);
        ok = true;
      } catch (e) {
        err = e instanceof Error;
      }
      if (recording) {
        hist.record(Number(process.hrtime.bigint() - t0) / 1000);
        if (ok) allowed++; else if (err) errors++; else denied++;
      }
    }
  }

  await redis.ping();
  const workers = [];
  for (let i = 0; i < o.concurrency; i++) workers.push(worker());
  await new Promise((r) => setTimeout(r, o.warmup * 1000));
  recording = true;
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await new Promise((r) => setTimeout(r, o.duration * 1000));
  recording = false;
  const window = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  stopping = true;
  await Promise.all(workers);
  redis.disconnect();

  const checks = allowed + denied;
  const r = {
    concurrency: o.concurrency, window_s: window, checks, allowed, denied, errors,
    checks_per_s: checks / window,
    latency_us: {
      p50: hist.quantile(0.5), p90: hist.quantile(0.9), p99: hist.quantile(0.99),
      p999: hist.quantile(0.999), max: hist.max, mean: hist.total ? hist.sum / hist.total : 0,
    },
    client_cpu_s: (cpu.user + cpu.system) / 1e6,
  };
  if (o.json) {
    console.log(JSON.stringify(r));
  } else {
    console.log(`rlf-bench: ${o.concurrency} concurrent checks, ${window.toFixed(2)} s: ` +
      `${Math.round(r.checks_per_s)} checks/s (${allowed} allowed, ${denied} denied, ${errors} errors)`);
    console.log(`latency (us): p50 ${r.latency_us.p50} p90 ${r.latency_us.p90} ` +
      `p99 ${r.latency_us.p99} p99.9 ${r.latency_us.p999} max ${r.latency_us.max}`);
    console.log(`client: CPU ${r.client_cpu_s.toFixed(2)} s`);
  }
}

main().catch((e) => { console.error(`rlf-bench: ${e.message}`); process.exit(1); });
