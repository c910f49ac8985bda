// Drive RudderStack's unmodified Node SDK (@rudderstack/rudder-sdk-node) at a trackd /v1 API.
//
// usage: node rudder_node.mjs HOST WRITE_KEY PREFIX      (HOST like http://127.0.0.1:PORT)
//
// Sends identify, track, page, group, an anonymous track, alias, then 1,000 "Bulk" tracks,
// flushes until the SDK's queue is empty and every call's callback has fired, prints one
// JSON line on stdout and exits 1 if the SDK reported any delivery error.
import Analytics from "@rudderstack/rudder-sdk-node";
import { createRequire } from "node:module";

const [host, writeKey, p] = process.argv.slice(2);
if (!host || !writeKey || !p) {
  console.error("usage: node rudder_node.mjs HOST WRITE_KEY PREFIX");
  process.exit(2);
}
// The SDK's logger writes with console.log: keep stdout for the summary line.
console.log = (...a) => console.error(...a);
const { version } = createRequire(import.meta.url)("@rudderstack/rudder-sdk-node/package.json");
const BULK = 1000;
const WAIT_MS = 60_000;
const started = Date.now();
const errors = [];
let calls = 0;
let delivered = 0;
let failed = 0;

// Only the data plane URL and the retry budget differ from the defaults (gzip stays on, as
// shipped): 2 retries, so a failure surfaces in seconds. errorHandler also stops a failed
// flush from becoming an unhandled rejection.
const client = new Analytics(writeKey, {
  dataPlaneUrl: host,
  retryCount: 2,
  timeout: 10_000,
  logLevel: "error",
  errorHandler: (err) => {
    const status = err?.response?.status;
    errors.push(status ? `HTTP ${status}` : String(err?.code ?? err?.message ?? err));
  },
});

const cb = (err) => {
  if (err) failed++;
  else delivered++;
};
const call = (method, msg) => {
  calls++;
  client[method](msg, cb);
};

call("identify", { userId: `${p}-u1`, traits: { email: `${p}-u1@example.com`, name: "Ann", plan: "pro" } });
call("track", { userId: `${p}-u1`, event: "Order Completed", properties: { order_id: "o-1", total: 42.5 } });
call("page", { userId: `${p}-u1`, name: "Pricing", properties: { path: "/pricing" } });
call("group", { userId: `${p}-u1`, groupId: "acme", traits: { name: "Acme Inc" } });
call("track", { anonymousId: `${p}-anon`, event: "Viewed Ad" });
call("alias", { previousId: `${p}-anon`, userId: `${p}-u2` });
for (let i = 0; i < BULK; i++) call("track", { userId: `${p}-bulk`, event: "Bulk", properties: { i } });

// flush() sends at most flushAt (20) messages per call: repeat until the queue is empty,
// then wait for the callbacks of the requests still in flight.
const deadline = Date.now() + WAIT_MS;
while (client.queue.length > 0 && Date.now() < deadline) {
  await client.flush().catch(() => {});
}
while (delivered + failed < calls && Date.now() < deadline) {
  await new Promise((r) => setTimeout(r, 50));
}
const summary = {
  sdk: "@rudderstack/rudder-sdk-node",
  version,
  calls,
  delivered,
  failed,
  unanswered: calls - delivered - failed,
  errors: errors.slice(0, 5),
  seconds: (Date.now() - started) / 1000,
};
summary.ok = delivered === calls && failed === 0 && errors.length === 0;
process.stdout.write(JSON.stringify(summary) + "\n");
process.exit(summary.ok ? 0 : 1);
