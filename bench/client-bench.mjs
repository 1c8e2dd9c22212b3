#!/usr/bin/env node
// client-bench: usaged's `check` as a Node.js app server sees it, through usaged-client
// (clients/node, built) on one connection: the figure to put beside rate-limiter-flexible
// (rlf-bench.js) in bench/compare.
//
//   node bench/client-bench.mjs --socket PATH [--concurrency 256] [--duration 10] [--warmup 1]
//        [--rate N] [--users 1000] [--providers openai,...] [--json]
//
// Without --rate: `concurrency` checks always in flight (closed loop), the peak. With --rate:
// checks started at that fixed rate whatever the answers do (open loop); each latency counts
// from the moment its check was due, so a stall shows in the tail rather than hiding it.
import { createRequire } from "node:module";
import { connect } from "../clients/node/dist/esm/index.js";

const { Hist, measure, parseArgs, userId } = createRequire(import.meta.url)("./node-common.js");

function options(argv) {
  const o = parseArgs(argv, {
    socket: null, token: null, concurrency: 256, duration: 10, warmup: 1, rate: 0,
    users: 1000, providers: "openai,anthropic,google,mistral,groq", json: false,
  });
  if (!o.socket) throw new Error("give --socket PATH");
  return o;
}

async function main() {
  const o = options(process.argv);
  const u = await connect({ path: o.socket, token: o.token ?? undefined, timeouts: { check: 10000 } });
  const providers = o.providers.split(",");
  const keys = [];
  for (let i = 0; i < o.users; i++) for (const p of providers) keys.push({ userId: userId(i), provider: p });
  const pick = () => keys[(Math.random() * keys.length) | 0];

  let recording = false, stopping = false;
  let allowed = 0, denied = 0, errors = 0;
  const hist = new Hist(); // from when the check was due
  const sentHist = new Hist(); // from when check() was called (differs only with --rate)
  const done = (due, sent, r) => {
    if (!recording) return;
    const now = process.hrtime.bigint();
    hist.record(Number(now - due) / 1000);
    sentHist.record(Number(now - sent) / 1000);
    if (r === null) errors++; else if (r.allowed) allowed++; else denied++;
  };
  const one = (due) => {
    const sent = process.hrtime.bigint();
    return u.check(pick()).then((r) => done(due, sent, r), () => done(due, sent, null));
  };

  const running = [];
  if (o.rate > 0) {
    // Open loop: every millisecond, start the checks that have come due since the last tick.
    const start = process.hrtime.bigint();
    let started = 0;
    running.push(new Promise((resolve) => {
      const tick = () => {
        if (stopping) return resolve();
        const elapsedNs = process.hrtime.bigint() - start;
        const due = Math.floor((Number(elapsedNs) / 1e9) * o.rate);
        for (; started < due; started++) {
          one(start + BigInt(Math.round((started / o.rate) * 1e9)));
        }
        setTimeout(tick, 1);
      };
      tick();
    }));
  } else {
    for (let i = 0; i < o.concurrency; i++) {
      running.push((async () => {
        while (!stopping) await one(process.hrtime.bigint());
      })());
    }
  }
  const { window, cpuS } = await measure(o, (on) => { recording = on; });
  stopping = true;
  await Promise.all(running);
  await u.close();

  const checks = allowed + denied;
  const r = {
    mode: o.rate > 0 ? "fixed_rate" : "closed_loop", rate: o.rate, concurrency: o.rate > 0 ? null : o.concurrency,
    window_s: window, checks, allowed, denied, errors, checks_per_s: checks / window,
    latency_us: {
      p50: hist.quantile(0.5), p90: hist.quantile(0.9), p99: hist.quantile(0.99),
      p999: hist.quantile(0.999), max: hist.max, mean: hist.total ? hist.sum / hist.total : 0,
    },
    latency_from_call_us: { p50: sentHist.quantile(0.5), p99: sentHist.quantile(0.99) },
    client_cpu_s: cpuS,
  };
  if (o.json) {
    console.log(JSON.stringify(r));
  } else {
    console.log(`client-bench (${r.mode}${o.rate ? ` ${o.rate}/s` : `, ${o.concurrency} in flight`}), ` +
      `${window.toFixed(2)} s: ${Math.round(r.checks_per_s)} checks/s (${allowed} allowed, ${denied} denied, ${errors} errors)`);
    console.log(`latency (us): p50 ${r.latency_us.p50} p90 ${r.latency_us.p90} ` +
      `p99 ${r.latency_us.p99} p99.9 ${r.latency_us.p999} max ${r.latency_us.max}` +
      (o.rate ? `; from the call: p50 ${r.latency_from_call_us.p50} p99 ${r.latency_from_call_us.p99}` : ""));
    console.log(`client: CPU ${r.client_cpu_s.toFixed(2)} s`);
  }
}

main().catch((e) => { console.error(`client-bench: ${e.message}`); process.exit(1); });
