// Drive Segment's unmodified Node SDK (@segment/analytics-node) at a trackd /v1 API.
//
// usage: node segment_node.mjs HOST WRITE_KEY PREFIX      (HOST like http://127.0.0.1:PORT)
//
// Sends identify, track, page, group, an anonymous track, alias, then 1,000 "Bulk" tracks,
// waits until every call's callback has fired (closeAndFlush), prints one JSON line on
// stdout and exits 1 if the SDK reported any delivery error.
import { Analytics } from "@segment/analytics-node";
import { createRequire } from "node:module";

const [host, writeKey, p] = process.argv.slice(2);
if (!host || !writeKey || !p) {
  console.error("usage: node segment_node.mjs HOST WRITE_KEY PREFIX");
  process.exit(2);
}
// Anything the SDK logs goes to stderr: stdout carries only the summary line.
console.log = (...a) => console.error(...a);
const { version } = createRequire(import.meta.url)("@segment/analytics-node/package.json");
const BULK = 1000;
const started = Date.now();
const errors = [];
let calls = 0;
let delivered = 0;
let failed = 0;

// Only the host and the retry budget differ from the defaults: 2 retries, so a failure
// surfaces in seconds instead of after 10 retries / a 12 h backoff budget.
const analytics = new Analytics({
  writeKey,
  host,
  maxRetries: 2,
  maxTotalBackoffDuration: 20,
  maxRateLimitDuration: 20,
  httpRequestTimeout: 10_000,
});
analytics.on("error", (e) => errors.push(`${e.code}: ${e.reason?.message ?? e.reason}`));

const cb = (err) => {
  if (err) failed++;
  else delivered++;
};
const call = (method, msg) => {
  calls++;
  analytics[method](msg, cb);
};

call("identify", { userId: `${p}-u1`, traits: { email: `${p}-u1@example.com`, name: "Ann", plan: "pro" } });
call("track", { userId: `${p}-u1`, event: "Order Completed", properties: { order_id: "o-1", total: 42.5 } });
call("page", { userId: `${p}-u1`, name: "Pricing", properties: { path: "/pricing" } });
call("group", { userId: `${p}-u1`, groupId: "acme", traits: { name: "Acme Inc" } });
call("track", { anonymousId: `${p}-anon`, event: "Viewed Ad" });
call("alias", { previousId: `${p}-anon`, userId: `${p}-u2` });
for (let i = 0; i < BULK; i++) call("track", { userId: `${p}-bulk`, event: "Bulk", properties: { i } });

await analytics.closeAndFlush({ timeout: 60_000 });
const summary = {
  sdk: "@segment/analytics-node",
  version,
  calls,
  delivered,
  failed,
  errors: errors.slice(0, 5),
  seconds: (Date.now() - started) / 1000,
};
summary.ok = delivered === calls && failed === 0 && errors.length === 0;
process.stdout.write(JSON.stringify(summary) + "\n");
process.exit(summary.ok ? 0 : 1);
