// What the daemon tests share: the daemon's socket and token from the environment that
// tests/integration/test_node_client.py sets, SQL through psql, and waiting for a condition.
import { execFileSync } from "node:child_process";
import { connect } from "../../dist/esm/index.js";

export const env = {
  socket: need("USAGED_SOCKET"),
  token: need("USAGED_TOKEN"),
  pid: Number(need("USAGED_PID")),
  user: need("USAGED_USER"),
};

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run these tests through tests/integration/test_node_client.py`);
  return v;
}

/** A client of the test daemon, authenticated. */
export function client(opts = {}) {
  return connect({ path: env.socket, token: env.token, ...opts });
}

/** Rows of one query as arrays of strings (psql's unaligned output). */
export function sql(query) {
  const out = execFileSync(need("USAGED_PSQL"), ["-X", "-q", "-At", "-F", "\t", "-d", need("USAGED_PG_DSN"), "-c", query], { encoding: "utf8" });
  return out.split("\n").filter((l) => l !== "").map((l) => l.split("\t"));
}

export function count(query) {
  return Number(sql(query)[0][0]);
}

/** Polls cond() until it is true; throws naming what it waited for after timeoutMs. */
export async function waitFor(cond, what, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A user id of auth.users, made for one test. */
export function newUser() {
  const id = sql("INSERT INTO auth.users (id, email) SELECT u, u::text || '@node.test' FROM gen_random_uuid() AS u RETURNING id")[0][0];
  return id;
}
