#!/usr/bin/env node
// Chromium -> Chromium data-channel throughput between two network namespaces.
//
//   node c2c.mjs --ns-a NS_A --ns-b NS_B [--stun stun:198.18.0.2:3478] [--bytes N]
//                [--message-size 65536] [--timeout S] [--mdns] [--no-verify] [--json]
//
// Launches one headless Chromium in each namespace (`ip netns exec NS chromium …`; node and the
// DevTools pipes stay where node runs), relays SDP and trickled candidates between them, and
// sends --bytes (default 64 MiB) from A to B over one reliable, ordered data channel in 64 KiB
// messages with bufferedAmount flow control (send while below 4 MiB, resume at 1 MiB). B checks
// the order, size and every byte of each message (a seeded pattern both sides derive; skip
// with --no-verify).
//
// Prints one JSON line (--json) or a sentence:
//   {"ok":true,"bytes":…,"seconds":…,"mbps":<MB/s, 10^6 bytes>,"max_stall_ms":…,"open_ms":…,
//    "first_byte_ms":…,"verified":true,"path":{"a":…,"b":…}}
// seconds: from B's channel open to B's last byte; max_stall_ms: the longest gap between two
// received messages (or from open to the first); open_ms: from the offer to A's channel open.
// On failure or timeout: exit 1, the reason on stderr (and {"ok":false,"error":…} with --json).
// Chromium's host candidates are IP addresses unless --mdns (then `.local` names, which do not
// resolve across namespaces: only srflx/prflx pairs can work). Exit 2 on bad usage.

import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from './args.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2), ['json', 'mdns', 'no-verify', 'help']);
  } catch (e) {
    console.error(`c2c: ${e.message}`);
    return 2;
  }
  if (args.help || !args.nsA || !args.nsB) {
    console.error('usage: node c2c.mjs --ns-a NS_A --ns-b NS_B [--stun URL] [--bytes N] [--message-size N] [--timeout S] [--mdns] [--no-verify] [--json]');
    return args.help ? 0 : 2;
  }
  const bytes = Number(args.bytes || 64 * 1024 * 1024);
  const messageSize = Number(args.messageSize || 65536);
  const timeoutS = Number(args.timeout || 120);
  if (!(bytes > 0) || !(messageSize >= 4) || !(timeoutS > 0)) {
    console.error('c2c: --bytes, --message-size (>= 4) and --timeout must be positive numbers');
    return 2;
  }
  const iceServers = args.stun ? [{ urls: args.stun }] : [];
  const verbose = process.env.C2C_DEBUG ? (l) => console.error(l) : () => {};

  const { launch } = await import('./chromium.mjs');
  const t0 = Date.now();
  const browsers = [];
  let timer;
  const result = {};
  try {
    const outcome = await new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${timeoutS} s (${progress(result)})`)), timeoutS * 1000);
      run().catch(reject);

      async function run() {
        const sides = {};
        const handler = (name, other) => (m) => {
          if (m.type === 'signal') {
            verbose(`${name} -> ${other}: ${m.signal.type} ${m.signal.candidate || ''}`);
            sides[other].page.evaluate((s) => window.c2c.signal(s), m.signal).catch(reject);
          } else if (m.type === 'log') {
            verbose(`[${name}] ${m.text}`);
          } else if (m.type === 'error') {
            reject(new Error(`${name}: ${m.error}`));
          } else if (m.type === 'open') {
            if (name === 'a') result.open_ms = Date.now() - result.offer_at;
          } else if (m.type === 'sent') {
            result.sent = m;
          } else if (m.type === 'received') {
            result.received = m;
            resolve();
          }
        };
        for (const [name, ns, other] of [['a', args.nsA, 'b'], ['b', args.nsB, 'a']]) {
          const c = await launch({ netns: ns, mdns: !!args.mdns, script: join(HERE, 'c2c-page.js'),
            exposed: { toNode: (m) => handler(name, other)(m) }, log: verbose });
          browsers.push(c);
          sides[name] = c;
        }
        const config = { bytes, messageSize, iceServers, seed: 0x5eed, verify: !args.noVerify };
        await sides.b.page.evaluate((c) => window.c2c.start({ ...c, role: 'b' }), config);
        result.offer_at = Date.now();
        await sides.a.page.evaluate((c) => window.c2c.start({ ...c, role: 'a' }), config);
        result.sides = sides;
      }
    });
    void outcome;
    const r = result.received;
    if (r.error) throw new Error(`received data is wrong: ${r.error}`);
    const path = {};
    for (const [name, side] of Object.entries(result.sides)) path[name] = await side.page.evaluate(() => window.c2c.path()).catch(() => null);
    const out = { ok: true, bytes: r.bytes, seconds: round(r.seconds, 3), mbps: round(r.bytes / r.seconds / 1e6, 2),
      max_stall_ms: Math.round(r.max_stall_ms), open_ms: result.open_ms, first_byte_ms: Math.round(r.first_byte_ms),
      verified: r.verified, messages: r.messages, path, total_s: round((Date.now() - t0) / 1000, 1) };
    console.log(args.json ? JSON.stringify(out)
      : `${out.bytes} bytes in ${out.seconds} s: ${out.mbps} MB/s, longest stall ${out.max_stall_ms} ms, open in ${out.open_ms} ms (${out.path.a && out.path.a.local} -> ${out.path.a && out.path.a.remote})`);
    return 0;
  } catch (e) {
    console.error(`c2c: ${e.message}`);
    if (args.json) console.log(JSON.stringify({ ok: false, error: e.message }));
    return 1;
  } finally {
    clearTimeout(timer);
    await Promise.all(browsers.map((b) => b.close()));
  }
}

function progress(r) {
  if (r.received) return 'done';
  if (r.open_ms !== undefined) return `channel open after ${r.open_ms} ms, transfer not finished`;
  if (r.offer_at) return 'the data channel never opened (no working ICE pair?)';
  return 'the browsers did not start';
}

function round(x, d) { const f = 10 ** d; return Math.round(x * f) / f; }

main().then((code) => process.exit(code), (e) => {
  console.error(`c2c: ${e.stack || e}`);
  process.exit(1);
});
