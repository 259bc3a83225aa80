// Launching Debian's Chromium headless through playwright-core, optionally inside a network
// namespace, and wiring a page to node. Shared by interop.mjs and c2c.mjs.
//
// Chromium in a namespace gathers ICE candidates only when the namespace has an interface with
// an address and a default route (FIELD-NOTES); the namespace is the caller's to make.

import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const HERE = dirname(fileURLToPath(import.meta.url));

// Launch Chromium (inside `netns` when given). `mdns: false` turns off the obfuscation of host
// candidates as random `.local` names. The page is an empty one loaded from a file: URL (a
// secure context, so crypto.subtle exists) with `script` (a path) added. Returns
// { browser, page, close() }.
export async function launch({ netns = null, mdns = true, extraArgs = [], script = null, exposed = {}, log = () => {} } = {}) {
  let executablePath = CHROMIUM;
  let wrapperDir = null;
  if (netns) {
    if (!existsSync(`/run/netns/${netns}`)) throw new Error(`no network namespace ${netns} (ip netns list)`);
    // playwright talks to Chromium over inherited pipes (fds 3 and 4), which `ip netns exec`
    // keeps: only the browser's network is in the namespace, node stays where it is.
    wrapperDir = mkdtempSync(join(tmpdir(), 'proxim-chromium-'));
    executablePath = join(wrapperDir, 'chromium-in-netns');
    writeFileSync(executablePath,
      `#!/bin/sh\nexec ip netns exec ${shellQuote(netns)} ${shellQuote(CHROMIUM)} "$@"\n`);
    chmodSync(executablePath, 0o755);
  }
  const args = [
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--disable-dev-shm-usage',
    // No hostname resolution at all: nothing here needs a name, and a namespace's DNS server
    // (the host's resolv.conf) is not to be reached.
    '--host-resolver-rules=MAP * ~NOTFOUND',
    ...extraArgs,
  ];
  if (!mdns) args.push('--disable-features=WebRtcHideLocalIpsWithMdns');
  let browser;
  try {
    browser = await chromium.launch({
      executablePath,
      headless: true,
      // Root has no sandbox; playwright then passes --no-sandbox.
      chromiumSandbox: false,
      args,
      timeout: 30000,
    });
  } catch (e) {
    if (wrapperDir) rmSync(wrapperDir, { recursive: true, force: true });
    throw new Error(`cannot launch ${CHROMIUM}${netns ? ` in netns ${netns}` : ''}: ${e.message.split('\n')[0]}`);
  }
  const page = await browser.newPage();
  page.on('console', (m) => log(`[page ${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => log(`[page error] ${e.message}`));
  for (const [name, fn] of Object.entries(exposed)) await page.exposeFunction(name, fn);
  await page.goto(pathToFileURL(join(HERE, 'blank.html')).href);
  if (script) await page.addScriptTag({ path: script });
  return {
    browser,
    page,
    async close() {
      await browser.close().catch(() => {});
      if (wrapperDir) rmSync(wrapperDir, { recursive: true, force: true });
    },
  };
}

function shellQuote(s) {
  return `'${String(s).replace(/'/g, `'\\''`)}'`;
}
