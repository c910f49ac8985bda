// Drive Segment's unmodified browser SDK (@segment/analytics-next, analytics.js 2.0) in
// Debian's chromium against a trackd /v1 API.
//
// usage: node browser_segment.mjs HOST WRITE_KEY PREFIX     (HOST like http://127.0.0.1:PORT)
//
// A tiny static server on 127.0.0.1 (another port, so another origin than HOST: the real
// CORS path, preflight included) serves a page that loads analytics-next's UMD bundle from
// node_modules. The CDN settings are given inline (cdnSettings) and the bundle's chunk base
// points at the static server, so nothing is fetched from Segment's CDN; the browser cannot
// resolve any name but localhost anyway. The page calls identify, track and page for
// userId PREFIX-web, and the driver waits until HOST answered 200 to one request of each
// type. Prints one JSON line on stdout; exits 1 on any failed or non-2xx request to HOST,
// any request that left the machine, a page error, or a timeout.
//
// env: CHROMIUM (default /usr/bin/chromium), SDK_WAIT_MS (default 20000),
//      SDK_LINGER_MS: keep the page open that long after delivery (analytics-next posts its
//      own usage metrics to HOST/v1/m every 30 s; 35000 shows them),
//      SDK_DELIVERY=batching: the SDK's opt-in batching strategy (one POST HOST/v1/b with
//      {batch:[...]}) instead of the default one POST per call (/v1/i, /v1/t, /v1/p).
import { chromium } from "playwright-core";
import { createRequire } from "node:module";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";

const [host, writeKey, p] = process.argv.slice(2);
if (!host || !writeKey || !p) {
  console.error("usage: node browser_segment.mjs HOST WRITE_KEY PREFIX");
  process.exit(2);
}
console.log = (...a) => console.error(...a);
const WAIT_MS = Number(process.env.SDK_WAIT_MS || 20_000);
const LINGER_MS = Number(process.env.SDK_LINGER_MS || 0);
const DELIVERY = process.env.SDK_DELIVERY || "standard";
const require = createRequire(import.meta.url);
const { version } = require("@segment/analytics-next/package.json");
const umdDir = path.join(path.dirname(require.resolve("@segment/analytics-next/package.json")), "dist", "umd");
const target = new URL(host);
const apiHost = `${target.host}/v1`; // analytics-next wants host[:port]/path, scheme apart
const started = Date.now();

const page_html = (origin) => `<!doctype html>
<html><head><meta charset="utf-8"><title>trackd SDK test: Pricing</title>
<script>
  // Where the bundle loads its lazy chunks from (it reads window.analytics._cdn when it
  // starts): this server, never cdn.segment.com.
  window.analytics = { _cdn: ${JSON.stringify(origin)} };
</script>
<script src="/analytics-next/bundles/index.js"></script>
</head><body><h1>Pricing</h1></body></html>`;

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  if (url.pathname === "/") {
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
    res.end(page_html(`http://127.0.0.1:${server.address().port}`));
    return;
  }
  if (url.pathname === "/favicon.ico") {
    res.writeHead(204);
    res.end();
    return;
  }
  const prefix = "/analytics-next/bundles/";
  const name = url.pathname.startsWith(prefix) ? url.pathname.slice(prefix.length) : "";
  const file = path.join(umdDir, name);
  if (name && !name.includes("/") && !name.includes("..") && fs.existsSync(file)) {
    res.writeHead(200, { "Content-Type": "text/javascript; charset=utf-8" });
    fs.createReadStream(file).pipe(res);
    return;
  }
  res.writeHead(404, { "Content-Type": "text/plain" });
  res.end("not found");
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const origin = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    // Nothing resolves but the two local servers: no request can leave the machine.
    `--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost, EXCLUDE ${target.hostname}`],
});
const problems = [];
const external = [];
const toHost = []; // every request to HOST, with its outcome
const pageErrors = [];
let summary;
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error") pageErrors.push(`console: ${m.text()}`);
  });
  // No page.route(): with interception on, playwright answers CORS preflights itself,
  // and the point is to see the server's own preflight answers.
  page.on("request", (req) => {
    const u = new URL(req.url());
    if (u.origin === target.origin) {
      let body = null;
      try { body = JSON.parse(req.postData() ?? "null"); } catch { body = null; }
      const types = Array.isArray(body?.batch) ? body.batch.map((e) => e?.type) : [body?.type];
      toHost.push({ req, method: req.method(), path: u.pathname, kind: req.resourceType(),
        types: types.filter(Boolean), status: null });
    } else if (u.origin !== origin && !u.protocol.startsWith("data")) {
      external.push(req.url());
    }
  });
  const settle = (req, status, failure) => {
    const r = toHost.find((x) => x.req === req);
    if (r) { r.status = status; r.failure = failure; }
  };
  page.on("requestfinished", async (req) => {
    const resp = await req.response().catch(() => null);
    settle(req, resp ? resp.status() : 0, null);
  });
  page.on("requestfailed", (req) => settle(req, 0, req.failure()?.errorText ?? "failed"));

  await page.goto(`${origin}/`);
  // The SDK's promises settle once a call was handed to its destination; bound the wait
  // anyway, so a stuck SDK is a failure and not a hang.
  const calls = page.evaluate(async ({ writeKey, apiHost, protocol, origin, p, delivery }) => {
    const segment = { apiKey: writeKey, apiHost, protocol };
    if (delivery === "batching") {
      segment.deliveryStrategy = { strategy: "batching", config: { size: 10, timeout: 500 } };
    }
    const [analytics] = await window.AnalyticsNext.AnalyticsBrowser.load(
      {
        writeKey,
        cdnURL: origin,
        // What cdn.segment.com/v1/projects/<key>/settings would have said: only the
        // Segment.io destination, pointed at HOST/v1.
        cdnSettings: { integrations: { "Segment.io": segment } },
      },
      // The documented way to send to another host (a proxy or a compatible API).
      { integrations: { "Segment.io": { ...segment } } },
    );
    window.__sdk = analytics;
    await analytics.identify(`${p}-web`, { email: `${p}-web@example.com`, name: "Ann", plan: "pro" });
    await analytics.track("Order Completed", { order_id: "o-1", total: 42.5 });
    await analytics.page("Pricing", { path: "/pricing" });
  }, { writeKey, apiHost, protocol: target.protocol.replace(":", ""), origin, p, delivery: DELIVERY });
  let timer;
  await Promise.race([
    calls,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`the SDK calls did not settle in ${WAIT_MS} ms`)), WAIT_MS);
    }),
  ]).finally(() => clearTimeout(timer));

  const want = ["identify", "track", "page"];
  const ok = (t) => toHost.some((r) => r.types.includes(t) && r.status >= 200 && r.status < 300);
  const delivered = () => want.every(ok);
  const deadline = Date.now() + WAIT_MS;
  while (!delivered() && Date.now() < deadline && !toHost.some((r) => r.failure || r.status >= 300)) {
    await new Promise((r) => setTimeout(r, 50));
  }
  if (LINGER_MS) await new Promise((r) => setTimeout(r, LINGER_MS));
  for (const t of want) {
    if (!ok(t)) problems.push(`${t}: no 2xx from HOST`);
  }
  for (const r of toHost) {
    if (r.failure) problems.push(`${r.method} ${r.path}: ${r.failure}`);
    else if (r.status !== null && (r.status < 200 || r.status >= 300)) problems.push(`${r.method} ${r.path}: HTTP ${r.status}`);
  }
  if (external.length) problems.push(`requests left the machine: ${external.slice(0, 3).join(", ")}`);
  problems.push(...pageErrors.map((e) => `page: ${e}`));
  summary = {
    sdk: "@segment/analytics-next",
    version,
    delivery: DELIVERY,
    browser: browser.version(),
    origin,
    requests: toHost.map(({ method, path, kind, types, status, failure }) => ({ method, path, kind, types, status, failure })),
    problems: problems.slice(0, 10),
    seconds: (Date.now() - started) / 1000,
  };
} catch (e) {
  summary = { sdk: "@segment/analytics-next", version, problems: [String(e?.stack ?? e)], seconds: (Date.now() - started) / 1000 };
} finally {
  await browser.close().catch(() => {});
  server.close();
}
summary.ok = summary.problems.length === 0;
process.stdout.write(JSON.stringify(summary) + "\n");
process.exit(summary.ok ? 0 : 1);
