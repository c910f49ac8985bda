// The console in a real browser (Debian's chromium, headless, through playwright-core):
// sign-in, an event tracked through the API appearing live, a user looked up, the counts
// chart, and hostile event data shown as text. Saves a screenshot of each view and prints
// their paths. Run by the api test suite (tests/api/console.rs), which starts trackd and
// passes TRACKD_URL, TRACKD_TOKEN, TRACKD_SECRET and SCREENSHOT_DIR.

import { chromium } from "playwright-core";
import { strict as assert } from "node:assert";
import http from "node:http";
import path from "node:path";

const base = process.env.TRACKD_URL;
const token = process.env.TRACKD_TOKEN;
const secret = process.env.TRACKD_SECRET;
const shots = process.env.SCREENSHOT_DIR;
const WAIT = 20_000;

async function track(body) {
  const response = await fetch(`${base}/api/v2/events/track?auth_token=${token}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(response.status, 200, await response.text());
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const saved = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  const dialogs = [];
  page.on("dialog", async (d) => { dialogs.push(d.message()); await d.dismiss(); });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const shot = async (name) => {
    const file = path.join(shots, `console-${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    saved.push(file);
  };

  // Without a key nothing but the sign-in form.
  await page.goto(`${base}/ui`);
  await page.locator("#sign-in").waitFor({ state: "visible" });
  assert.equal(await page.locator("#tabs").isHidden(), true);
  assert.equal(await page.locator("#view-live").isHidden(), true);
  await page.fill("#key", "sk_wrong");
  await page.click("#sign-in-form button");
  await page.locator("#sign-in-error").filter({ hasText: "unknown credential" }).waitFor({ timeout: WAIT });
  await shot("sign-in");
  // A tracking token is not a secret key.
  await page.fill("#key", token);
  await page.click("#sign-in-form button");
  await page.locator("#sign-in-error").filter({ hasText: "tracking token cannot read" }).waitFor({ timeout: WAIT });
  await page.fill("#key", secret);
  await page.click("#sign-in-form button");
  await page.locator("#live-status.live").waitFor({ timeout: WAIT });
  // The key is kept in the session, never in the URL.
  assert.ok(!page.url().includes(secret));

  // An event tracked through the API appears live, without a reload.
  await track({ identity: { id: "browser-user", email: "browser@example.com" },
    event_name: "Browser checkout", data: { total: 42.5, items: ["a", "b"] },
    extras: { source: "browser-test" } });
  const row = page.locator("#live-list li", { hasText: "Browser checkout" });
  await row.waitFor({ timeout: WAIT });
  assert.match(await row.innerText(), /browser-user/);
  assert.match(await row.innerText(), /browser-test/);

  // Hostile data: HTML, script, an event handler, bidi controls. Shown as text, never run.
  await track({ identity: { id: "<img src=x onerror=alert(2)>" },
    event_name: "<script>alert(1)</script>",
    data: { html: "<script>alert(1)</script>", img: "<img src=x onerror=alert(3)>",
      bidi: "\u202Eevil\u202C" } });
  const hostile = page.locator("#live-list li", { hasText: "<script>alert(1)</script>" });
  await hostile.waitFor({ timeout: WAIT });
  await hostile.locator("summary").click();
  const shown = await hostile.locator("pre").innerText();
  assert.ok(shown.includes("<script>alert(1)</script>"), shown);
  assert.ok(shown.includes("<img src=x onerror=alert(3)>"), shown);
  assert.ok(shown.includes("\\u202eevil\\u202c"), shown);
  assert.equal(await page.locator("#live-list script, #live-list img").count(), 0);
  // The live counters move: one duplicate dropped.
  await track({ identity: { id: "browser-user", email: "browser@example.com" },
    event_name: "Browser checkout", data: { total: 42.5, items: ["a", "b"] },
    extras: { source: "browser-test" } });
  await page.locator("#live-dups", { hasText: "1" }).waitFor({ timeout: WAIT });
  await shot("live");
  // Filter by event name: only matching events are shown.
  await page.fill("#live-event", "Browser checkout");
  await page.waitForTimeout(1000);
  await page.locator("#live-status.live").waitFor({ timeout: WAIT });
  await track({ identity: { id: "browser-user" }, event_name: "Browser checkout", data: { n: 2 } });
  await page.locator("#live-list li", { hasText: "Browser checkout" }).first().waitFor({ timeout: WAIT });
  assert.equal(await page.locator("#live-list li", { hasText: "alert" }).count(), 0);
  await page.fill("#live-event", "");

  // Look a user up by email: profile and timeline.
  await page.click('.tab[data-view="users"]');
  await page.fill("#user-query", "browser@example.com");
  await page.click("#user-form button");
  await page.locator("#user-profile", { hasText: "browser-user" }).waitFor({ timeout: WAIT });
  await page.locator("#user-events li", { hasText: "Browser checkout" }).first().waitFor({ timeout: WAIT });
  await shot("user");
  // Users whose ids are ".." and ".": each timeline is the user's own. In a URL path they
  // would be relative segments ("/users/../events" is "/events", every user's events).
  for (const [id, email] of [["..", "dotdot@example.com"], [".", "dot@example.com"]]) {
    await track({ identity: { id, email }, event_name: `Event of ${email}` });
    await page.fill("#user-query", email);
    await page.click("#user-form button");
    await page.locator("#user-events li", { hasText: `Event of ${email}` }).waitFor({ timeout: WAIT });
    assert.match(await page.locator("#user-profile").innerText(), new RegExp(email));
    assert.equal(await page.locator("#user-events li").count(), 1, `${id}: its own event only`);
  }
  // By id, a dot segment cannot be put in a URL path: the console says so and shows nothing.
  await page.fill("#user-query", "..");
  await page.click("#user-form button");
  await page.locator("#user-error", { hasText: "look this user up by email" }).waitFor({ timeout: WAIT });
  assert.equal(await page.locator("#user-result").isHidden(), true);

  // Counts: a chart with axes, a legend and values on hover; the totals.
  await page.click('.tab[data-view="counts"]');
  await page.locator("#chart svg rect").first().waitFor({ timeout: WAIT });
  const legend = await page.locator("#chart .legend").innerText();
  assert.match(legend, /browser_checkout/);
  const title = await page.locator("#chart svg rect title").first().textContent();
  assert.match(title, /: \d+ at /);
  await page.locator("#chart svg rect").first().hover();
  await page.locator(".tip").filter({ hasText: " at " }).waitFor({ timeout: WAIT });
  assert.match(await page.locator("#totals").innerText(), /accepted/);
  await page.click('.range[data-range="day"]');
  await page.locator("#chart svg rect").first().waitFor({ timeout: WAIT });
  await shot("counts");

  // Destinations: a receiver that fails with markup in its answer; the console shows the
  // state, the backlog and the error as text, and pauses and resumes.
  const failing = http.createServer((req, res) => {
    req.resume();
    res.writeHead(500, { "Content-Type": "text/html" });
    res.end("<img src=x onerror=alert(1)>");
  });
  await new Promise((resolve) => failing.listen(0, "127.0.0.1", resolve));
  try {
    const created = await fetch(`${base}/api/v2/destinations`, {
      method: "POST",
      headers: { Authorization: `Bearer ${secret}`, "Content-Type": "application/json" },
      body: JSON.stringify({ name: "crm-hook", kind: "webhook",
        url: `http://127.0.0.1:${failing.address().port}/hook` }),
    });
    assert.equal(created.status, 201, await created.text());
    await track({ identity: { id: "dest-user" }, event_name: "Paid" });
    await page.click('.tab[data-view="destinations"]');
    const row = page.locator('#destinations-list tr[data-name="crm-hook"]');
    await row.locator(".state.retrying").waitFor({ timeout: WAIT });
    assert.equal(await row.locator(".last-error").innerText(),
      "the receiver answered 500: <img src=x onerror=alert(1)>");
    assert.equal(await row.locator("img").count(), 0, "markup shown as text");
    assert.equal(await row.locator("td.num").first().innerText(), "1", "backlog");
    await row.locator('button[data-action="pause"]').click();
    await row.locator(".state.paused").waitFor({ timeout: WAIT });
    await shot("destinations");
    await row.locator('button[data-action="resume"]').click();
    await row.locator(".state.retrying, .state.running").first().waitFor({ timeout: WAIT });
  } finally {
    failing.close();
  }

  // Privacy: the project's retention, and the audit log with the destination's creation
  // and pause.
  await page.click('.tab[data-view="privacy"]');
  await page.locator('#audit-list tr[data-action="destination.add"]').waitFor({ timeout: WAIT });
  assert.equal(await page.locator("#privacy-retention").innerText(), "off");
  assert.equal(await page.locator('#audit-list tr[data-action="destination.pause"]').count(), 1);
  assert.match(await page.locator('#audit-list tr[data-action="destination.add"]').innerText(),
    /key:[0-9a-f]{8}\s+destination\.add\s+crm-hook/);
  await shot("privacy");

  // A phone-sized screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.click('.tab[data-view="live"]');
  await page.locator("#live-status.live").waitFor({ timeout: WAIT });
  await track({ identity: { id: "phone-user" }, event_name: "Opened on a phone",
    data: { screen: "narrow" }, extras: { source: "ios" } });
  await page.locator("#live-list li", { hasText: "Opened on a phone" }).waitFor({ timeout: WAIT });
  await shot("phone");

  assert.deepEqual(dialogs, [], "no script from event data ran");
  assert.deepEqual(errors, [], "no errors on the page");
  // Signing out forgets the key.
  await page.click("#sign-out");
  await page.locator("#sign-in").waitFor({ state: "visible" });
  assert.equal(await page.evaluate(() => sessionStorage.getItem("trackd.secret")), null);
} finally {
  await browser.close();
}
for (const file of saved) console.log(`screenshot: ${file}`);
