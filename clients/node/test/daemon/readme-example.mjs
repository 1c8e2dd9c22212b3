// The README's example, as an app that installed the packed tarball runs it (ESM).
import { connect, UsagedError } from "usaged-client";

const userId = process.env.USAGED_USER;
const u = await connect({ path: process.env.USAGED_SOCKET, token: process.env.USAGED_TOKEN });
const r = await u.check({ userId, provider: "openai" });
if (!r.allowed) throw new Error(`denied: ${r.reason}, retry in ${r.retryAfterMs} ms`);
await u.logUsage([{ userId, provider: "openai", endpoint: "readme-example", statusCode: 200 }]);
await u.check({ userId: "not-a-uuid", provider: "openai" }).catch((e) => {
  if (!(e instanceof UsagedError) || e.code !== "invalid_field") throw e;
});
await u.close();
console.log("ok");
