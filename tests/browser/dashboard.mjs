// The dashboard in headless Chromium, driven by crates/cli/tests/dashboard.rs, which runs a real
// cutover with demo-app under load and checks through the CLI what this script did on the page.
//
//   node dashboard.mjs <admin base URL> <token> <screenshot dir>
//
// Protocol on stdout, one JSON object a line: {"check": what, ...} asks the Rust side to verify
// with `cutover status` (it answers `ok` or `fail <why>` on stdin); {"log": ...} is for the test's
// output; {"done": {...}} ends. Any failure exits non-zero with the reason on stderr.
import { launch } from './harness.mjs';
import { createInterface } from 'node:readline';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [base, token, shots] = process.argv.slice(2);
if (!base || !token || !shots) {
  console.error('usage: node dashboard.mjs <admin base URL> <token> <screenshot dir>');
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
const origin = new URL(base).origin;
const LONG = 90_000;

const input = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const say = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
const log = (msg) => say({ log: msg });
async function check(what, data = {}) {
  say({ check: what, ...data });
  const { value, done } = await input.next();
  if (done || value !== 'ok') throw new Error(`the CLI disagrees after "${what}": ${value}`);
}
function expect(cond, msg) {
  if (!cond) throw new Error(msg);
}

const browser = await launch();
const requests = [];
const outside = [];
browser.context.on('request', (r) => {
  const url = r.url();
  requests.push(url);
  if (!url.startsWith('data:') && new URL(url).origin !== origin) outside.push(url);
});

const text = (page, sel) => page.locator(sel).innerText();
// Waits in node, asking the page every 100 ms: the page's Content-Security-Policy forbids the
// string evaluation that page.waitForFunction relies on, and the test keeps the policy on.
async function until(page, fn, arg, what, timeout = LONG) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await page.evaluate(fn, arg);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await page.waitForTimeout(100);
  }
}
const waitText = (page, sel, re, timeout = LONG) =>
  until(page, ([s, src]) => {
    const e = document.querySelector(s);
    return e && new RegExp(src).test(e.textContent);
  }, [sel, re.source], `${sel} to match ${re}`, timeout);

async function confirmWith(page, reason) {
  await page.locator('#confirm').waitFor({ state: 'visible' });
  await page.fill('#confirm-reason', reason);
  await page.click('#confirm-ok');
  await page.locator('#confirm').waitFor({ state: 'hidden' });
}

async function deploy(page, version, env = '') {
  await page.goto(`${base}/#/live`);
  await page.locator('#live').waitFor({ state: 'visible' });
  if (!(await page.locator('#deploy-box').evaluate((d) => d.open))) {
    await page.click('#deploy-box summary');
  }
  await page.fill('#deploy-version', version);
  await page.fill('#deploy-env', env);
  await page.click('#deploy-form button[type="submit"]');
  await confirmWith(page, `dashboard test: ${version}`);
  await waitText(page, '#steer-result', new RegExp(`deploy: rollout #\\d+ of ${version}`));
  await waitText(page, '#versions', new RegExp(`→ ${version}$`));
}

const shot = (page, name) => page.screenshot({ path: join(shots, name), fullPage: true });

try {
  const page = await browser.page();
  await page.setViewportSize({ width: 1280, height: 1000 });
  page.on('pageerror', (e) => log(`page error: ${e.message}`));

  // 1. The login form; a wrong token is refused, with the API's message.
  await page.goto(`${base}/`);
  await page.locator('#login').waitFor({ state: 'visible' });
  await shot(page, 'dashboard-login.png');
  await page.fill('#token', 'not-the-token');
  await page.click('#login-submit');
  await waitText(page, '#login-error', /error: token: wrong admin token/);
  expect(await page.locator('#live').isHidden(), 'the wrong token showed the live view');
  const wrongBearer = await page.evaluate(async () =>
    (await fetch('/v1/status', { headers: { Authorization: 'Bearer nope' } })).status);
  expect(wrongBearer === 401, `a wrong bearer token got ${wrongBearer}`);
  log('wrong token refused');

  // 2. The right token: a session, the live view, and no token in any URL.
  await page.fill('#token', token);
  await page.click('#login-submit');
  await page.locator('#live').waitFor({ state: 'visible' });
  await waitText(page, '#phase', /done/);
  const cookies = await browser.context.cookies();
  const session = cookies.find((c) => c.name === 'cutover_session');
  expect(session && session.httpOnly && session.sameSite === 'Strict', `session cookie: ${JSON.stringify(cookies)}`);
  const readable = await page.evaluate(() => document.cookie);
  expect(!readable.includes('cutover_session'), 'a script can read the session cookie');

  // 3. A state change without the CSRF token, or with another, is refused before it acts.
  const noCsrf = await page.evaluate(async () => {
    const r = await fetch('/v1/pause', { method: 'POST' });
    return [r.status, (await r.json()).error];
  });
  expect(noCsrf[0] === 403 && noCsrf[1].code === 'forbidden', `no CSRF token: ${JSON.stringify(noCsrf)}`);
  const badCsrf = await page.evaluate(async () =>
    (await fetch('/v1/deploy', {
      method: 'POST',
      headers: { 'X-CSRF-Token': 'f'.repeat(64), 'Content-Type': 'application/json' },
      body: JSON.stringify({ version: 'v9' }),
    })).status);
  expect(badCsrf === 403, `a wrong CSRF token got ${badCsrf}`);
  await check('nothing changed', { phase: 'done', version: 'v1' });
  log('missing and wrong CSRF tokens refused');

  // 4. A healthy rollout of v2 from the page, followed to 100 %.
  await deploy(page, 'v2');
  const seenSteps = new Set();
  const points = [];
  let midShot = false;
  for (;;) {
    const s = await page.evaluate(() => ({
      phase: document.querySelector('#phase').dataset.phase,
      weight: document.querySelector('#weight').textContent,
      step: document.querySelector('#steps [aria-current]')?.dataset.step,
      points: Number(document.querySelector('#chart-latency').dataset.points || 0),
      canvas: !!document.querySelector('#chart-latency canvas'),
    }));
    if (s.step !== undefined) seenSteps.add(s.step);
    points.push(s.points);
    if (!midShot && seenSteps.size >= 3 && s.canvas) {
      await shot(page, 'dashboard-live.png');
      midShot = true;
    }
    if (s.phase === 'promoted' || s.phase === 'done') break;
    expect(s.phase !== 'aborted', `v2 was aborted: ${await text(page, '#phase-reason')}`);
    expect(points.length < LONG / 100, `v2 did not reach 100 % in time (last: ${JSON.stringify(s)})`);
    await page.waitForTimeout(100);
  }
  expect(await text(page, '#weight') === '100 %', `weight at the end: ${await text(page, '#weight')}`);
  expect(seenSteps.size >= 3, `the step indicator moved through ${[...seenSteps]} only`);
  expect(points.at(-1) > points[0] && points.at(-1) >= 10, `the chart's points went ${points[0]} → ${points.at(-1)}`);
  const kinds = await page.$$eval('#decisions li', (ls) => ls.map((l) => l.dataset.kind));
  expect(kinds.filter((k) => k === 'advance').length >= 2 && kinds.includes('promoted'), `decisions: ${kinds}`);
  if (!midShot) await shot(page, 'dashboard-live.png');
  await check('promoted', { version: 'v2' });
  log(`v2 promoted; steps seen ${[...seenSteps].join(',')}; chart points ${points[0]} → ${points.at(-1)}`);

  // 5. A slow canary: its abort appears, with its reason, on the page.
  await deploy(page, 'v3', 'DEMO_LATENCY=1500ms');
  await waitText(page, '#phase', /aborted/);
  await waitText(page, '#decisions', /aborted/);
  const reason = await text(page, '#phase-reason');
  expect(/p99-over-800ms/.test(reason), `the abort's reason on the page: ${reason}`);
  const abortItem = await page.locator('#decisions li[data-kind="aborted"]').last().innerText();
  expect(/p99-over-800ms/.test(abortItem), `the abort decision: ${abortItem}`);
  await page.locator('#chart-latency canvas').first().waitFor();
  // The abort's marker on the latency chart: the cursor on it shows its reason.
  await page.locator('#chart-latency').scrollIntoViewIfNeeded();
  const [mx, my] = await page.evaluate(() => {
    const u = charts['live-latency'].plot;
    const d = live.decisions.filter((k) => k.kind === 'aborted').at(-1);
    const r = u.over.getBoundingClientRect();
    // The abort is the last thing on the axis: its line is the plot's right edge.
    return [r.left + Math.min(u.valToPos(d.at / 1000, 'x'), r.width - 2), r.top + r.height / 2];
  });
  await page.mouse.move(mx, my);
  await waitText(page, '#chart-latency .marker-reason', /aborted: .*abort rule p99-over-800ms/, 10_000)
    .catch(async (e) => {
      const caption = await text(page, '#chart-latency .marker-reason').catch(() => '(none)');
      throw new Error(`${e.message}; the cursor at ${mx},${my} shows ${JSON.stringify(caption)}`);
    });
  await shot(page, 'dashboard-abort.png');
  await check('aborted', { version: 'v3', reason });
  log(`v3 aborted: ${reason}`);

  // 6. Pause (with the keyboard only) and promote from the page.
  await deploy(page, 'v4');
  await waitText(page, '#phase', /progressing/);
  await page.focus('[data-verb="pause"]');
  await page.keyboard.press('Enter');
  await page.locator('#confirm').waitFor({ state: 'visible' });
  await page.keyboard.type('hold for the dashboard test');
  await page.keyboard.press('Tab'); // Cancel
  await page.keyboard.press('Tab'); // Confirm
  await page.keyboard.press('Enter');
  await waitText(page, '#steer-result', /^pause: /);
  await waitText(page, '#phase', /paused \(by an operator\)/);
  await check('paused', { version: 'v4' });
  await page.click('[data-verb="promote"]');
  await confirmWith(page, 'looks good');
  await waitText(page, '#steer-result', /^promote: /);
  await waitText(page, '#phase', /promoted/);
  await check('promoted', { version: 'v4' });
  log('v4 paused and promoted from the page');

  // The last lines of an instance's log, from GET /v1/logs.
  await page.click('#instances tr[data-instance="v4-0"] details summary');
  await until(page, () => {
    const pre = document.querySelector('#instances tr[data-instance="v4-0"] pre');
    return pre && pre.textContent !== '…' && pre.textContent;
  }, null, "v4-0's log lines");
  const logText = await text(page, '#instances tr[data-instance="v4-0"] pre');
  expect(!logText.startsWith('error:'), `v4-0's log: ${logText}`);
  log(`v4-0's last log line: ${logText.split('\n').at(-1)}`);

  // 7. A refusal reads as the CLI prints it.
  await page.click('[data-verb="resume"]');
  await confirmWith(page, 'nothing to resume');
  await waitText(page, '#steer-result', /^error: /);
  await check('refusal', { verb: 'resume', text: await text(page, '#steer-result') });

  // 8. History, and a rollout's page replaying its recording.
  await page.goto(`${base}/#/history`);
  await until(page, () => {
    const rows = [...document.querySelectorAll('#history-table tbody tr')];
    return rows.length >= 4 && rows.every((r) => r.cells[5].textContent !== '…');
  }, null, 'the history with every blast radius');
  const v3row = await page.locator('#history-table tr[data-rollout="3"]').innerText();
  expect(/aborted/.test(v3row) && /peak 5 %/.test(v3row), `v3 in the history: ${v3row}`);
  await shot(page, 'dashboard-history.png');
  await page.click('#history-table tr[data-rollout="3"] a');
  await until(page,
    () => Number(document.querySelector('#replay-latency').dataset.points || 0) > 0
      && !!document.querySelector('#replay-decisions li[data-kind="aborted"]'),
    null, 'the replay of rollout 3');
  const summary = await text(page, '#rollout-summary');
  expect(/aborted/.test(summary), `the replay's summary: ${summary}`);
  await shot(page, 'dashboard-replay.png');
  log(`replay: ${summary}`);

  // 9. On a phone: one column, nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${base}/#/live`);
  await page.locator('#chart-latency canvas').first().waitFor();
  await page.waitForTimeout(300); // the resize is debounced by 150 ms
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  expect(overflow <= 0, `the page is ${overflow}px wider than a phone`);
  await shot(page, 'dashboard-phone.png');

  expect(outside.length === 0, `requests left ${origin}: ${outside.join(', ')}`);
  // One event stream, no polling: the page never asked for the status (the one request is this
  // script's wrong-bearer probe above), and for the log only when it was opened.
  const count = (part) => requests.filter((u) => new URL(u).pathname.startsWith(part)).length;
  const asked = { events: count('/v1/events'), status: count('/v1/status'), logs: count('/v1/logs') };
  expect(asked.events >= 1 && asked.events <= 3 && asked.status === 1 && asked.logs <= 2,
    `requests by route: ${JSON.stringify(asked)}`);
  say({ done: { requests: requests.length, outside, asked } });
} catch (e) {
  console.error(e.stack || String(e));
  process.exitCode = 1;
} finally {
  await browser.close();
  // stdin's reader would keep node running after a failure.
  process.exit();
}
