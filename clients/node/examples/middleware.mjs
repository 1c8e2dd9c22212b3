// An HTTP server (node:http, no framework) that guards a (faked) AI call with usaged: a check
// before, the RateLimit headers on every answer, a 429 with Retry-After when denied, and the
// call's usage logged after it, without waiting for the log on the request path.
//
//   USAGED_SOCKET=.local/usaged.sock node examples/middleware.mjs     # then:
//   curl -i -H 'x-user-id: 0190a3b1-6a8c-7b3e-9f10-2c4d5e6f7a8b' localhost:8080/generate
//
// In an app, `import ... from "usaged-client"`; here the package's own build is imported.
import { createServer } from "node:http";
import { connect, rateLimitHeaders, UsagedError } from "../dist/esm/index.js";

/** Stands in for the AI provider's API. */
async function fakeAiCall(prompt) {
  return { text: `an answer to ${JSON.stringify(prompt)}`, tokens: 42 };
}

/** A middleware in the usual (req, res, next) shape: checks the caller's quota first. */
export function usagedLimit(u, { provider = "openai" } = {}) {
  return async (req, res, next) => {
    const userId = req.headers["x-user-id"];
    let r;
    try {
      r = await u.check({ userId, provider });
    } catch (e) {
      if (e instanceof UsagedError && e.code === "invalid_field") {
        res.writeHead(400, { "content-type": "text/plain" }).end(`bad ${e.field}\n`);
        return;
      }
      // usaged is away or slow (timeout, closed): this app chooses to serve rather than fail.
      r = null;
    }
    if (r) for (const [k, v] of Object.entries(rateLimitHeaders(r))) res.setHeader(k, v);
    if (r && !r.allowed) {
      res.writeHead(429, { "content-type": "text/plain" }).end(`rate limited: ${r.reason}\n`);
      return;
    }
    req.usaged = { userId, provider, started: Date.now() };
    next();
  };
}

/** The handler behind the middleware: the AI call, then its usage logged (fire and forget). */
export function generate(u) {
  return async (req, res) => {
    const { userId, provider, started } = req.usaged;
    let status = 200;
    let body;
    try {
      body = JSON.stringify(await fakeAiCall(req.url));
    } catch (e) {
      status = 502;
      body = JSON.stringify({ error: String(e) });
    }
    res.writeHead(status, { "content-type": "application/json" }).end(body);
    u.logUsageNoWait([{
      userId, provider, endpoint: "/generate", statusCode: status,
      responseSize: Buffer.byteLength(body), responseTimeMs: Date.now() - started,
    }]);
  };
}

export function createApp(u, opts) {
  const limit = usagedLimit(u, opts);
  const handler = generate(u);
  return createServer((req, res) => limit(req, res, () => handler(req, res)));
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const u = await connect({ path: process.env.USAGED_SOCKET, token: process.env.USAGED_TOKEN });
  const server = createApp(u).listen(Number(process.env.PORT ?? 8080), "127.0.0.1");
  const stop = () => server.close(() => u.close()); // close() flushes the queued logs
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}
