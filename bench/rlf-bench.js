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

function options(argv) {
  const o = parseArgs(argv, {
    socket: null, host: null, port: 6379, concurrency: 256, duration: 10, warmup: 1,
    users: 1000, providers: 'openai,anthropic,google,mistral,groq', json: false,
    perMinute: 2000000000, perDay: 2100000000,
  });
  if (!o.socket && !o.host) throw new Error('give --socket PATH or --host HOST');
  return o;
}

const { Hist, measure, parseArgs, userId } = require('./node-common.js');

async function main() {
  const o = options(process.argv);
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
  const { window, cpuS } = await measure(o, (on) => { recording = on; });
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
    client_cpu_s: cpuS,
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
