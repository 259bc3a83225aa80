#!/usr/bin/env node
// Proxim <-> Chromium (libwebrtc) data-channel interop: one scenario per run.
//
//   node interop.mjs --scenario NAME --proxim-bin PATH [--netns NS] [--timeout S]
//                    [--log-dir DIR] [--json] [--set key=value,…]
//   node interop.mjs --list            # the scenarios, one "name<TAB>description" a line
//
// Launches headless Chromium (inside --netns when given; so is proxim-interop) and relays
// signals between the page (page.js: browser RTCSessionDescription / RTCIceCandidate form) and
// proxim-interop's stdin/stdout (Proxim's Signal JSON), translating both ways. Some scenarios
// munge what the page sends before it reaches Proxim, to present what other stacks send (aiortc's
// extra fingerprint lines, component-2 candidates, a complete SDP ending in a=end-of-candidates).
// Both sides run the same workloads; node judges the outcome as named checks and prints one
// JSON line (--json) or a short report. Exit 0 when every check passed, 1 otherwise, 2 on bad
// usage. With --log-dir: DIR/NAME.signals.jsonl (every signal, both ways, as relayed) and
// DIR/NAME.proxim.log (proxim-interop's stderr) and DIR/NAME.page.log.

import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from './args.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const MiB = 1024 * 1024;
// The longest a reliable stream may go without a message (see judge()). Load-sensitive: a
// headless Chromium on two busy cores pauses by itself (396-568 ms typical, 1058 ms once in a
// CI-like run on 2026-12-02, no loss on the veth); what this catches is a stack that recovers
// by its retransmission timer, whose backed-off RTO stalls a stream for seconds.
const STALL_MS = 1500;

// Every scenario: who offers, Chromium's mDNS setting, workloads, munging, extra checks.
// The page's send high-water mark is Proxim's (SEND_HIGH_WATER, 1 MiB). A partial channel's
// lifetime covers the time its messages wait behind a bulk stream queued on the same association.
const BASE = { bytes: 4 * MiB, messageSize: 16384, unreliable: 0, partial: 0, lifetimeMs: 3000,
  datagramSize: 1024, probeSizes: [], mdns: false, munge: [], conformance: false,
  nonTrickle: false, bindFingerprint: false, highWater: MiB };
const SCENARIOS = [
  ['proxim-offers', 'Proxim offers; reliable 4 MiB each way + unreliable + partial; Chromium mDNS on (.local host candidates)',
    { proximRole: 'offerer', mdns: true, unreliable: 300, partial: 300 }],
  ['proxim-offers-ip', 'as proxim-offers, Chromium mDNS off (IP host candidates)',
    { proximRole: 'offerer', unreliable: 300, partial: 300 }],
  ['chromium-offers', 'Chromium offers ("proxim" channel first); reliable 4 MiB each way + unreliable + partial; mDNS on',
    { proximRole: 'answerer', mdns: true, unreliable: 300, partial: 300 }],
  ['chromium-offers-ip', 'as chromium-offers, Chromium mDNS off',
    { proximRole: 'answerer', unreliable: 300, partial: 300 }],
  ['datagrams-alone', 'Chromium offers; unreliable + partial with only 64 KiB on the reliable channel: every partial message should arrive',
    { proximRole: 'answerer', bytes: 65536, unreliable: 300, partial: 300, allDatagrams: true }],
  ['proxim-offers-big', 'Proxim offers; 32 MiB each way in 64 KiB messages',
    { proximRole: 'offerer', bytes: 32 * MiB, messageSize: 65536 }],
  ['offer-conformance', "Proxim's offer and trickle as Chromium sees them: ice-options:trickle, max-message-size, component 1 only, candidates and end-of-candidates accepted",
    { proximRole: 'offerer', bytes: MiB, conformance: true }],
  ['answer-conformance', "Proxim's answer and trickle: no candidates before the answer, max-message-size, component 1 only, candidates and end-of-candidates accepted",
    { proximRole: 'answerer', bytes: MiB, conformance: true }],
  ['max-message-size-proxim-offers', 'messages of 16 KiB..256 KiB+1 both ways on a reliable channel; each side must honour the other\'s a=max-message-size',
    { proximRole: 'offerer', bytes: MiB, probeSizes: [16384, 65536, 65537, 262144, 262145] }],
  ['max-message-size-chromium-offers', 'as max-message-size-proxim-offers, Chromium offering',
    { proximRole: 'answerer', bytes: MiB, probeSizes: [16384, 65536, 65537, 262144, 262145] }],
  ['fingerprints-sha384-sha512-answer', "Chromium's answer also carries sha-384 and sha-512 fingerprints of its certificate (as aiortc sends)",
    { proximRole: 'offerer', bytes: MiB, munge: ['fingerprints'] }],
  ['fingerprints-sha384-sha512-offer', "Chromium's offer also carries sha-384 and sha-512 fingerprints",
    { proximRole: 'answerer', bytes: MiB, munge: ['fingerprints'] }],
  ['fingerprints-bound', 'extra fingerprints, and Proxim checks the SDP against the authenticated SHA-256 fingerprint (pairing fingerprint binding)',
    { proximRole: 'offerer', bytes: MiB, munge: ['fingerprints'], bindFingerprint: true }],
  ['fingerprint-bound-plain', "control for fingerprints-bound: Proxim checks the SDP against the authenticated SHA-256 fingerprint; Chromium's SDP as it is",
    { proximRole: 'offerer', bytes: MiB, bindFingerprint: true }],
  ['oversize-to-proxim', "Chromium is told Proxim takes 256 KiB messages (Proxim's a=max-message-size rewritten on the way): what Proxim does with messages over its own limit",
    { proximRole: 'offerer', bytes: MiB, probeSizes: [65536, 65537, 262144], munge: ['raise-proxim-mms'] }],
  ['component2-candidates', "every candidate Chromium trickles is also sent as a component-2 copy (RTCP candidates on a data-only m-line)",
    { proximRole: 'answerer', bytes: MiB, munge: ['component2'] }],
  ['complete-offer-end-of-candidates', 'Chromium offers without trickle: every candidate in the SDP, then a=end-of-candidates',
    { proximRole: 'answerer', bytes: MiB, nonTrickle: true, munge: ['eoc-sdp'] }],
  ['complete-answer-end-of-candidates', 'Chromium answers without trickle: every candidate in the SDP, then a=end-of-candidates',
    { proximRole: 'offerer', bytes: MiB, nonTrickle: true, munge: ['eoc-sdp'] }],
].map(([name, description, s]) => ({ ...BASE, ...s, name, description }));

async function main() {
  const args = parseArgs(process.argv.slice(2), ['json', 'list', 'help']);
  if (args.help) {
    console.log('usage: node interop.mjs --scenario NAME --proxim-bin PATH [--netns NS] [--timeout S] [--log-dir DIR] [--json] | --list');
    return 0;
  }
  if (args.list) {
    for (const s of SCENARIOS) console.log(`${s.name}\t${s.description}`);
    return 0;
  }
  let scn = SCENARIOS.find((s) => s.name === args.scenario);
  // --set key=value[,key=value]: override scenario fields (JSON values), to explore by hand.
  if (scn && args.set) {
    scn = { ...scn };
    for (const kv of args.set.split(',')) {
      const [k, v] = kv.split('=');
      try { scn[k] = JSON.parse(v); } catch (_) { scn[k] = v; }
    }
  }
  if (!scn || !args.proximBin) {
    console.error(`interop.mjs: need --scenario (one of: ${SCENARIOS.map((s) => s.name).join(', ')}) and --proxim-bin`);
    return 2;
  }
  const timeoutS = Number(args.timeout || 60);
  const run = new Run(scn, args);
  const outcome = await run.execute(timeoutS);
  if (args.json) {
    console.log(JSON.stringify(outcome));
  } else {
    for (const c of outcome.checks) console.log(`${c.ok ? 'ok  ' : 'FAIL'} ${c.name}${c.detail ? `: ${c.detail}` : ''}`);
    console.log(`${scn.name}: ${outcome.ok ? 'passed' : 'FAILED'} in ${outcome.seconds.toFixed(1)} s`);
  }
  return outcome.ok ? 0 : 1;
}

class Run {
  constructor(scn, args) {
    this.scn = scn;
    this.args = args;
    this.t0 = Date.now();
    this.proximResult = null;
    this.pageResult = null;
    this.fatal = null;
    this.obs = { proxim_signals: [], page_signals: [], proxim_candidates_before_description: 0,
      proxim_description: null, page_description_sent: null, local_candidates_to_proxim: 0,
      mdns_candidates_to_proxim: 0, proxim_end_of_candidates: false, page_end_of_candidates: false };
    this.pageCert = null;
    const dir = args.logDir;
    if (dir) mkdirSync(dir, { recursive: true });
    this.signalLog = dir ? createWriteStream(join(dir, `${scn.name}.signals.jsonl`)) : null;
    this.pageLog = dir ? createWriteStream(join(dir, `${scn.name}.page.log`)) : null;
    this.proximLog = dir ? createWriteStream(join(dir, `${scn.name}.proxim.log`)) : null;
    this.done = new Promise((resolve) => { this.finish = resolve; });
  }

  ms() { return Date.now() - this.t0; }

  record(direction, signal) {
    if (this.signalLog) this.signalLog.write(`${JSON.stringify({ ms: this.ms(), direction, signal })}\n`);
  }

  async execute(timeoutS) {
    const timer = setTimeout(() => this.fail(`timed out after ${timeoutS} s`), timeoutS * 1000);
    let chromium = null;
    try {
      const { launch } = await import('./chromium.mjs');
      chromium = await launch({
        netns: this.args.netns, mdns: this.scn.mdns, script: join(HERE, 'page.js'),
        exposed: { toNode: (m) => this.fromPage(m) },
        log: (line) => this.pageLog && this.pageLog.write(`${line}\n`),
      });
      this.page = chromium.page;
      if (this.scn.bindFingerprint) {
        // The fingerprint a pairing would have authenticated: that of a certificate made now and
        // handed to the page's RTCPeerConnection.
        await this.page.evaluate(async () => {
          window.preCert = await RTCPeerConnection.generateCertificate({ name: 'ECDSA', namedCurve: 'P-256' });
        });
        this.boundFingerprint = await this.page.evaluate(() => window.preCert.getFingerprints()
          .find((f) => f.algorithm === 'sha-256').value);
      }
      this.startProxim(timeoutS);
      const s = this.scn;
      await this.page.evaluate(([config, useCert]) => window.interop.start({ ...config,
        certificate: useCert ? window.preCert : undefined }), [{
        role: s.proximRole === 'offerer' ? 'answerer' : 'offerer', bytes: s.bytes,
        messageSize: s.messageSize, unreliable: s.unreliable, partial: s.partial,
        lifetimeMs: s.lifetimeMs, datagramSize: s.datagramSize, probeSizes: s.probeSizes,
        nonTrickle: s.nonTrickle, highWater: s.highWater }, !!s.bindFingerprint]);
      await this.done;
    } catch (e) {
      this.fatal = this.fatal || `driver: ${e.message}`;
    } finally {
      clearTimeout(timer);
      // Give whichever side has not reported yet a moment, then end proxim-interop (stdin EOF
      // is its "done"), then the browser.
      if (!this.fatal && this.page && !this.pageResult) {
        await this.page.evaluate(() => window.interop.finish()).catch(() => {});
        await sleep(200);
      }
      await this.stopProxim();
      if (chromium) await chromium.close();
      for (const s of [this.signalLog, this.pageLog, this.proximLog]) if (s) s.end();
    }
    const checks = judge(this.scn, this.proximResult, this.pageResult, this.obs, this.fatal);
    return {
      scenario: this.scn.name, ok: checks.every((c) => c.ok), seconds: this.ms() / 1000, checks,
      fatal: this.fatal, proxim: this.proximResult, page: this.pageResult,
      observations: summarize(this.obs),
    };
  }

  fail(reason) {
    if (!this.fatal) this.fatal = reason;
    this.finish();
  }

  maybeDone() {
    if (this.proximResult && this.pageResult) this.finish();
  }

  // --- proxim-interop -------------------------------------------------------------------------

  startProxim(timeoutS) {
    const s = this.scn;
    const pargs = ['--role', s.proximRole, '--bytes', String(s.bytes), '--message-size', String(s.messageSize),
      '--unreliable', String(s.unreliable), '--partial', String(s.partial), '--lifetime-ms', String(s.lifetimeMs),
      '--datagram-size', String(s.datagramSize), '--timeout', String(Math.max(10, timeoutS - 10)), '--linger', '10'];
    if (s.probeSizes.length) pargs.push('--probe-sizes', s.probeSizes.join(','));
    if (this.boundFingerprint) pargs.push('--expect-remote-fingerprint', this.boundFingerprint);
    const [cmd, argv] = this.args.netns
      ? ['ip', ['netns', 'exec', this.args.netns, this.args.proximBin, ...pargs]]
      : [this.args.proximBin, pargs];
    const env = { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info,proxim_core=debug' };
    this.proxim = spawn(cmd, argv, { stdio: ['pipe', 'pipe', 'pipe'], env });
    this.proximExit = new Promise((resolve) => this.proxim.on('exit', (code, sig) => resolve({ code, sig })));
    this.proxim.on('error', (e) => this.fail(`proxim-interop: ${e.message}`));
    this.proxim.stdin.on('error', () => {});
    this.proxim.stderr.on('data', (d) => this.proximLog && this.proximLog.write(d));
    createInterface({ input: this.proxim.stdout }).on('line', (line) => this.fromProxim(line));
    this.proximExit.then(({ code, sig }) => {
      if (!this.proximResult) this.fail(`proxim-interop exited (${sig || code}) without a result`);
    });
  }

  async stopProxim() {
    if (!this.proxim) return;
    this.proxim.stdin.end();
    const exited = await Promise.race([this.proximExit, sleep(15000).then(() => null)]);
    if (!exited) {
      this.proxim.kill('SIGKILL');
      await this.proximExit;
    }
  }

  toProxim(signal) {
    this.record('to-proxim', signal);
    if (this.proxim && this.proxim.stdin.writable) this.proxim.stdin.write(`${JSON.stringify(signal)}\n`);
  }

  fromProxim(line) {
    let m;
    try { m = JSON.parse(line); } catch (_) { this.fail(`proxim-interop wrote a non-JSON line: ${line.slice(0, 200)}`); return; }
    if (m.result) {
      this.proximResult = m.result;
      // Proxim gave up before its channels ran (establish failed): the page would wait forever.
      if (m.result.ok === false && m.result.open_ms === undefined) {
        this.page.evaluate(() => window.interop.finish()).catch(() => {});
      }
      this.maybeDone();
      return;
    }
    this.record('from-proxim', m);
    this.obs.proxim_signals.push({ ms: this.ms(), kind: m.kind });
    let browser = null;
    switch (m.kind) {
      case 'offer': case 'answer': {
        this.obs.proxim_description = m.sdp;
        let sdp = m.sdp;
        if (this.scn.munge.includes('raise-proxim-mms')) sdp = sdp.replace(/^a=max-message-size:\d+/m, 'a=max-message-size:262144');
        browser = { type: 'description', descType: m.kind, sdp };
        break;
      }
      case 'candidate':
        if (!this.obs.proxim_description) this.obs.proxim_candidates_before_description += 1;
        (this.obs.proxim_trickled ||= []).push(m.candidate);
        (this.obs.proxim_trickled_mids ||= []).push(m.sdp_mid ?? null);
        browser = { type: 'candidate', candidate: m.candidate,
          sdpMid: m.sdp_mid ?? null, sdpMLineIndex: m.sdp_mline_index ?? null };
        break;
      case 'end_of_candidates':
        this.obs.proxim_end_of_candidates = true;
        browser = { type: 'end-of-candidates' };
        break;
      default:
        return; // auth and the like are not for the browser
    }
    this.page.evaluate((s) => window.interop.signal(s), browser).catch((e) => this.fail(`page: ${e.message}`));
  }

  // --- the page -------------------------------------------------------------------------------

  fromPage(m) {
    if (m.type === 'log') {
      if (this.pageLog) this.pageLog.write(`${m.text}\n`);
    } else if (m.type === 'result') {
      this.pageResult = m.result;
      this.maybeDone();
    } else if (m.type === 'signal') {
      this.relayPageSignal(m.signal).catch((e) => this.fail(`relay: ${e.message}`));
    }
  }

  async relayPageSignal(s) {
    this.record('from-page', s);
    this.obs.page_signals.push({ ms: this.ms(), type: s.type });
    const munge = this.scn.munge;
    if (s.type === 'description') {
      let sdp = s.sdp;
      if (munge.includes('fingerprints')) sdp = await this.addFingerprints(sdp);
      if (munge.includes('eoc-sdp') && !/^a=end-of-candidates/m.test(sdp)) sdp = `${sdp.replace(/\r\n$/, '')}\r\na=end-of-candidates\r\n`;
      this.obs.page_description_sent = sdp;
      for (const line of sdp.split('\r\n')) if (line.startsWith('a=candidate:')) this.countCandidate(line.slice(2));
      this.toProxim({ kind: s.descType, sdp });
    } else if (s.type === 'candidate') {
      this.countCandidate(s.candidate);
      const signal = { kind: 'candidate', candidate: s.candidate };
      if (s.sdpMid !== null && s.sdpMid !== undefined) signal.sdp_mid = s.sdpMid;
      if (s.sdpMLineIndex !== null && s.sdpMLineIndex !== undefined) signal.sdp_mline_index = s.sdpMLineIndex;
      this.toProxim(signal);
      if (munge.includes('component2')) {
        const parts = s.candidate.split(' ');
        if (parts[1] === '1') {
          parts[1] = '2';
          parts[3] = String(Number(parts[3]) - 1);
          this.toProxim({ ...signal, candidate: parts.join(' ') });
        }
      }
    } else if (s.type === 'end-of-candidates') {
      this.obs.page_end_of_candidates = true;
      this.toProxim({ kind: 'end_of_candidates' });
    }
  }

  countCandidate(c) {
    this.obs.local_candidates_to_proxim += 1;
    if (/ [^ ]+\.local /.test(c)) this.obs.mdns_candidates_to_proxim += 1;
  }

  // aiortc's form: after the sha-256 line, sha-384 and sha-512 lines of the same certificate.
  async addFingerprints(sdp) {
    const cert = await this.page.evaluate(() => window.interop.certificate());
    if (!cert || !cert.base64) throw new Error('the page reports no DTLS certificate to fingerprint');
    const der = Buffer.from(cert.base64, 'base64');
    const fp = (alg) => createHash(alg).update(der).digest('hex').toUpperCase().match(/../g).join(':');
    const check = fp('sha256');
    if (check !== cert.fingerprint.toUpperCase()) throw new Error(`certificate digest ${check} is not the page's fingerprint ${cert.fingerprint}`);
    return sdp.replace(/^(a=fingerprint:sha-256 [0-9A-Fa-f:]+)\r\n/m,
      `$1\r\na=fingerprint:sha-384 ${fp('sha384')}\r\na=fingerprint:sha-512 ${fp('sha512')}\r\n`);
  }
}

// --- judging ------------------------------------------------------------------------------------

function judge(scn, proxim, page, obs, fatal) {
  const checks = [];
  const check = (name, ok, detail = '') => checks.push({ name, ok: !!ok, detail });
  const pc = (proxim && proxim.channels) || {};
  const bc = (page && page.channels) || {};
  const connected = proxim && !proxim.error && proxim.open_ms !== undefined && page && !page.fatal;
  check('connected (default channel open on both sides)', connected && !fatal,
    fatal || (proxim && proxim.error) || (page && page.fatal) || (!proxim ? 'no result from proxim-interop' : !page ? 'no result from the page' : `open in ${Math.round(proxim.open_ms)} ms (Proxim), ${Math.round(page.open_ms)} ms (page)`));
  if (!connected) {
    // Where it stuck: each side's phase and what each channel had moved.
    if (proxim && proxim.progress) check('(how far Proxim got)', false, JSON.stringify(proxim.progress));
    if (page) {
      const moved = Object.fromEntries(Object.entries(page.channels || {})
        .map(([l, c]) => [l, c.progress || (c.ok === false ? c.error || 'failed' : 'finished')]));
      check('(how far the page got)', false, JSON.stringify({ connection: page.connection_state,
        ice: page.ice_connection_state, sctp: page.sctp && page.sctp.state, open_ms: page.open_ms, channels: moved }));
    }
    return checks;
  }

  const stream = (from, to, label) => {
    const sent = from[label] && from[label].sent;
    const got = to[label] && to[label].received;
    if (!sent || !got) return [false, 'no report'];
    const ok = sent.error === null && got.sha256 === sent.sha256 && got.bytes === scn.bytes;
    const rate = got.seconds ? `, ${(got.bytes / got.seconds / 1e6).toFixed(1)} MB/s (${got.seconds.toFixed(1)} s)` : '';
    return [ok, ok ? `${got.bytes} bytes, sha256 ${got.sha256.slice(0, 12)}…${rate}` : `sent ${sent.bytes} (${sent.error || sent.sha256}), received ${got.bytes} (${got.error || got.sha256})`];
  };
  check('reliable Proxim -> Chromium (SHA-256)', ...stream(pc, bc, 'proxim'));
  check('reliable Chromium -> Proxim (SHA-256)', ...stream(bc, pc, 'proxim'));
  if (scn.bytes >= 4 * MiB) {
    // On a lossless veth a message never waits seconds; an SCTP stack that recovers a lost
    // packet only by its retransmission timer (RTO >= 1 s, doubling) does.
    const gap = (r) => (r && r.received && typeof r.received.max_gap_ms === 'number' ? r.received.max_gap_ms : Infinity);
    const g1 = gap(bc.proxim), g2 = gap(pc.proxim);
    // Time Chromium's page sat on a bufferedAmount that Chromium never lowered although its
    // SCTP had sent everything (see room() in page.js): a wait of Chromium's own making,
    // allowed on the Chromium -> Proxim gap and named in the detail.
    const stuck = ((page && page.buffered_amount_stuck) || []).filter((x) => x.label === 'proxim');
    const stuckMs = stuck.reduce((sum, x) => sum + x.waited_ms, 0);
    const note = stuck.length ? ` (of which ${stuckMs} ms Chromium's bufferedAmount stuck at ${stuck[0].buffered_amount} with its SCTP idle: ${stuck.length} time(s))` : '';
    check(`no reliable message waits over ${STALL_MS} ms`, g1 <= STALL_MS && g2 <= STALL_MS + stuckMs,
      `longest gap Proxim -> Chromium ${Math.round(g1)} ms, Chromium -> Proxim ${Math.round(g2)} ms${note}`);
  }

  // The side that did not open a channel learns its options from DCEP.
  const receiver = scn.proximRole === 'offerer' ? { name: 'Chromium', ch: bc, ret: 'max_retransmits', life: 'max_packet_life_time' }
    : { name: 'Proxim', ch: pc, ret: 'max_retransmits', life: 'max_packet_life_time' };
  for (const label of ['unreliable', 'partial']) {
    if (!(scn[label] > 0)) continue;
    const a = pc[label], b = bc[label];
    if (!a || !b) { check(`${label} channel`, false, `missing on ${!a ? 'Proxim' : 'Chromium'}`); continue; }
    const dgram = (r) => `${r.received.messages}/${scn[label]} received, ${r.received.corrupt} corrupt, ${r.received.duplicates} dup, ${r.received.reordered} reordered, seqs ${(r.received.ranges || '').slice(0, 60)}`;
    const inOrder = label === 'partial' ? a.received.reordered === 0 && b.received.reordered === 0 : true;
    // Partial reliability with a lifetime long enough loses nothing; maxRetransmits=0 may.
    const wantAll = scn.allDatagrams && label === 'partial';
    const all = !wantAll || (a.received.messages === scn[label] && b.received.messages === scn[label]);
    check(`${label} both ways${wantAll ? ' (all of them)' : ''}`, a.ok && b.ok && inOrder && all, `Proxim ${dgram(a)}; Chromium ${dgram(b)}`);
    const o = receiver.ch[label].options || {};
    const want = label === 'unreliable' ? { ordered: false, [receiver.ret]: 0 } : { ordered: true, [receiver.life]: scn.lifetimeMs };
    const okOpts = Object.entries(want).every(([k, v]) => o[k] === v);
    check(`${label} options as seen by the answering side (${receiver.name}, from DCEP)`, okOpts,
      `want ${JSON.stringify(want)}, got ${JSON.stringify(o)}`);
  }

  if (scn.probeSizes.length) probeChecks(scn, pc.probe, bc.probe, page, obs, check);
  if (scn.conformance) conformanceChecks(scn, proxim, page, obs, check);
  if (scn.mdns) {
    check('Chromium host candidates were .local names (mDNS on)', obs.mdns_candidates_to_proxim > 0,
      `${obs.mdns_candidates_to_proxim} of ${obs.local_candidates_to_proxim}; path ${JSON.stringify(proxim.path)}`);
  }
  return checks;
}

function advertised(sdp) {
  const m = /^a=max-message-size:(\d+)/m.exec(sdp || '');
  return m ? Number(m[1]) : null;
}

function probeChecks(scn, p, b, page, obs, check) {
  if (!p || !b) { check('probe channel', false, `missing on ${!p ? 'Proxim' : 'Chromium'}`); return; }
  const proximAdv = advertised(obs.proxim_description);
  const pageAdv = advertised(obs.page_description_sent);
  check("Proxim's SDP has a=max-message-size", proximAdv !== null,
    proximAdv === null ? 'absent: RFC 8841 then says 64 KiB; Chromium uses ' + (page.sctp && page.sctp.maxMessageSize) : `${proximAdv}`);
  // What each sender accepted must match the receiver's advertised limit.
  const raised = scn.munge.includes('raise-proxim-mms');
  const limitFor = { proxim: pageAdv === null ? 65536 : pageAdv,
    chromium: raised ? 262144 : proximAdv === null ? 65536 : proximAdv };
  const honours = (who, sent) => {
    const lim = limitFor[who];
    const wrong = sent.results.filter((r) => (r.size <= lim) !== (r.result === 'accepted'));
    return [wrong.length === 0, `limit ${lim}; ${sent.results.map((r) => `${r.size}:${r.result.split(':')[0]}`).join(' ')}${wrong.length ? ` — wrong: ${wrong.map((r) => `${r.size} ${r.result}`).join('; ')}` : ''}`];
  };
  check(`Proxim sends up to Chromium's a=max-message-size (${pageAdv === null ? 'absent: 65536' : pageAdv}) and refuses more`, ...honours('proxim', p.sent));
  check(`Chromium sends up to Proxim's a=max-message-size (${raised ? 'rewritten to 262144' : proximAdv}) and refuses more`, ...honours('chromium', b.sent));
  const arrives = (sent, got) => {
    const accepted = sent.results.filter((r) => r.result === 'accepted').map((r) => r.size);
    const missing = accepted.filter((s) => !got.sizes.includes(s));
    return [missing.length === 0 && got.ended && got.corrupt === 0,
      `accepted ${JSON.stringify(accepted)}, arrived ${JSON.stringify(got.sizes)}, end marker ${got.ended ? 'arrived' : 'missing'}${got.corrupt ? `, ${got.corrupt} corrupt` : ''}`];
  };
  check('every message Proxim accepted arrives at Chromium', ...arrives(p.sent, b.received));
  check('every message Chromium accepted arrives at Proxim', ...arrives(b.sent, p.received));
}

function conformanceChecks(scn, proxim, page, obs, check) {
  const sdp = obs.proxim_description || '';
  const kind = scn.proximRole === 'offerer' ? 'offer' : 'answer';
  check(`Proxim's ${kind} has a=ice-options:trickle`, /^a=ice-options:.*\btrickle\b/m.test(sdp),
    (sdp.match(/^a=ice-options:.*$/m) || ['no a=ice-options line'])[0]);
  check(`Proxim's ${kind} has a=max-message-size`, advertised(sdp) !== null,
    advertised(sdp) === null ? `absent (Chromium then allows ${page.sctp && page.sctp.maxMessageSize})` : String(advertised(sdp)));
  const all = [...sdp.split(/\r?\n/).filter((l) => l.startsWith('a=candidate:')).map((l) => l.slice(2)), ...(obs.proxim_trickled || [])];
  const comp2 = all.filter((c) => c.split(' ')[1] !== '1');
  check('Proxim sends only component-1 candidates (data-only m-line)', comp2.length === 0,
    comp2.length ? `${comp2.length} of ${all.length}, e.g. ${comp2[0]}` : `${all.length} candidates`);
  const mid = (sdp.match(/^a=mid:(.*)$/m) || [])[1];
  const mids = [...new Set((obs.proxim_trickled_mids || []).map((m) => JSON.stringify(m)))];
  check(`Proxim's trickled candidates carry the m-line's mid (a=mid:${mid})`, mids.length > 0 && mids.every((m) => m === JSON.stringify(mid)),
    `sdp_mid ${mids.join(', ') || 'never sent'}`);
  if (scn.proximRole === 'answerer') {
    check('Proxim sends no candidate before its answer', obs.proxim_candidates_before_description === 0,
      `${obs.proxim_candidates_before_description} candidate(s) before the answer; Chromium refused ${page.early_candidates} early signal(s)`);
  }
  check("Chromium accepted every Proxim candidate", page.candidate_errors.length === 0,
    page.candidate_errors.length ? page.candidate_errors.slice(0, 2).join(' | ') : `${page.candidates_added} added`);
  check("Proxim signals end-of-candidates and Chromium accepts it", obs.proxim_end_of_candidates && page.end_of_candidates === 'accepted',
    obs.proxim_end_of_candidates ? `Chromium: ${page.end_of_candidates}` : 'never sent');
  check(`Proxim's ${kind} has a=end-of-candidates once gathering is complete, or trickles it`,
    obs.proxim_end_of_candidates || /^a=end-of-candidates/m.test(sdp), /^a=end-of-candidates/m.test(sdp) ? 'in SDP' : 'trickled only');
}

function summarize(obs) {
  return {
    proxim_signals: obs.proxim_signals.map((s) => `${s.ms}ms ${s.kind}`),
    page_signals: obs.page_signals.map((s) => `${s.ms}ms ${s.type}`),
    proxim_candidates_before_description: obs.proxim_candidates_before_description,
    candidates_to_proxim: obs.local_candidates_to_proxim,
    mdns_candidates_to_proxim: obs.mdns_candidates_to_proxim,
    proxim_sdp: obs.proxim_description,
    sdp_to_proxim: obs.page_description_sent,
  };
}

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

main().then((code) => process.exit(code), (e) => {
  console.error(`interop.mjs: ${e.stack || e}`);
  process.exit(1);
});
