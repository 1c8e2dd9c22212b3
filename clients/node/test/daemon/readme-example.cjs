// The README's example from CommonJS, as an app that installed the packed tarball runs it.
const { connect, rateLimitHeaders } = require("usaged-client");

(async () => {
  const userId = process.env.USAGED_USER;
  const u = await connect({ path: process.env.USAGED_SOCKET, token: process.env.USAGED_TOKEN });
  const r = await u.check({ userId, provider: "openai" });
  if (!r.allowed || !("RateLimit-Limit" in rateLimitHeaders(r))) throw new Error("unexpected check");
  await u.logUsage([{ userId, provider: "openai", endpoint: "readme-example", statusCode: 200 }]);
  await u.close();
  console.log("ok");
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
