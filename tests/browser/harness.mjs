// A headless Chromium for cutover's end-to-end tests: Debian's /usr/bin/chromium (or
// $CHROMIUM), driven by playwright-core over the DevTools protocol. Reusable by any test that
// needs a real browser: `const b = await launch(); const page = await b.page(); ...;
// await b.close()`.
//
// The flags keep chromium off the network it would otherwise reach for (updates, sync,
// QUIC probes): without them it hangs on a machine with no internet. Each launch gets a fresh
// profile directory, removed on close.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

export async function launch() {
  const profile = mkdtempSync(join(tmpdir(), 'cutover-chromium-'));
  // A persistent context is how playwright takes a profile directory (`--user-data-dir`).
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    timeout: 60_000,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  return {
    context,
    async page() {
      return context.newPage();
    },
    async close() {
      try {
        await context.close();
      } finally {
        rmSync(profile, { recursive: true, force: true });
      }
    },
  };
}
