// One side of a Chromium -> Chromium data-channel throughput run (c2c.mjs). The offerer ("a")
// opens channel "bulk" (reliable, ordered) and sends; the answerer ("b") receives and measures.
//
// Messages: message i is block[i % BLOCKS] of a pool both sides derive from the same seed, with
// bytes 0..4 replaced by i (big-endian): the receiver checks order, sizes and every byte.
// Signals (browser form, relayed by node): {type:'description', descType, sdp},
// {type:'candidate', candidate, sdpMid, sdpMLineIndex}, {type:'end-of-candidates'}.
'use strict';

(() => {
  const t0 = performance.now();
  const now = () => performance.now() - t0;
  const send = (m) => window.toNode(m);
  const BLOCKS = 16;
  const HIGH = 4 * 1024 * 1024;
  const LOW = 1024 * 1024;

  let pc = null;
  let cfg = null;
  let pool = null;
  let chain = Promise.resolve();

  function makePool(seed, size) {
    let x = seed >>> 0 || 1;
    const blocks = [];
    for (let b = 0; b < BLOCKS; b++) {
      const words = new Uint32Array(Math.ceil(size / 4));
      for (let i = 0; i < words.length; i++) {
        x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
        words[i] = x;
      }
      blocks.push(new Uint8Array(words.buffer, 0, size));
    }
    return blocks;
  }

  function message(i, size) {
    const m = pool[i % BLOCKS].slice(0, size);
    new DataView(m.buffer).setUint32(0, i >>> 0);
    return m;
  }

  async function start(config) {
    cfg = config;
    pool = makePool(cfg.seed, cfg.messageSize);
    pc = new RTCPeerConnection({ iceServers: cfg.iceServers });
    pc.onicecandidate = (e) => {
      if (e.candidate && e.candidate.candidate) {
        send({ type: 'signal', signal: { type: 'candidate', candidate: e.candidate.candidate,
          sdpMid: e.candidate.sdpMid, sdpMLineIndex: e.candidate.sdpMLineIndex } });
      } else if (!e.candidate) {
        send({ type: 'signal', signal: { type: 'end-of-candidates' } });
      }
    };
    pc.onconnectionstatechange = () => {
      send({ type: 'log', text: `${now().toFixed(0)}ms connection ${pc.connectionState}` });
      if (pc.connectionState === 'failed') send({ type: 'error', error: 'peer connection failed (ICE found no working pair, or DTLS failed)' });
    };
    if (cfg.role === 'a') {
      const dc = pc.createDataChannel('bulk');
      sender(dc);
      await pc.setLocalDescription(await pc.createOffer());
      describe();
    } else {
      pc.ondatachannel = (e) => receiver(e.channel);
    }
  }

  function describe() {
    const d = pc.localDescription;
    send({ type: 'signal', signal: { type: 'description', descType: d.type, sdp: d.sdp } });
  }

  function signal(m) {
    chain = chain.then(async () => {
      try {
        if (m.type === 'description') {
          await pc.setRemoteDescription({ type: m.descType, sdp: m.sdp });
          if (m.descType === 'offer') {
            await pc.setLocalDescription(await pc.createAnswer());
            describe();
          }
        } else if (m.type === 'candidate') {
          await pc.addIceCandidate({ candidate: m.candidate, sdpMid: m.sdpMid, sdpMLineIndex: m.sdpMLineIndex });
        } else if (m.type === 'end-of-candidates') {
          await pc.addIceCandidate();
        }
      } catch (e) {
        send({ type: 'log', text: `signal ${m.type} refused: ${e.name}: ${e.message}` });
        if (m.type === 'description') send({ type: 'error', error: `${m.descType}: ${e.name}: ${e.message}` });
      }
    });
  }

  function room(dc) {
    if (dc.bufferedAmount < HIGH) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onLow = () => { cleanup(); resolve(); };
      const onClose = () => { cleanup(); reject(new Error('channel closed while sending')); };
      const cleanup = () => { dc.removeEventListener('bufferedamountlow', onLow); dc.removeEventListener('close', onClose); };
      dc.addEventListener('bufferedamountlow', onLow);
      dc.addEventListener('close', onClose);
    });
  }

  function sender(dc) {
    dc.binaryType = 'arraybuffer';
    dc.bufferedAmountLowThreshold = LOW;
    dc.onopen = async () => {
      const opened = now();
      send({ type: 'open', ms: opened });
      let sent = 0;
      let i = 0;
      try {
        while (sent < cfg.bytes) {
          await room(dc);
          const n = Math.min(cfg.messageSize, cfg.bytes - sent);
          dc.send(message(i, n));
          sent += n;
          i += 1;
        }
        send({ type: 'sent', bytes: sent, messages: i, seconds: (now() - opened) / 1000 });
      } catch (e) {
        send({ type: 'error', error: `send after ${sent} bytes: ${e.message}` });
      }
    };
    dc.onclose = () => send({ type: 'log', text: `${now().toFixed(0)}ms channel closed` });
  }

  function receiver(dc) {
    dc.binaryType = 'arraybuffer';
    let opened = null, last = null, first = null;
    let bytes = 0, i = 0, maxStall = 0, bad = null;
    dc.onopen = () => { opened = now(); last = opened; send({ type: 'open', ms: opened }); };
    dc.onmessage = (e) => {
      const t = now();
      if (opened === null) { opened = t; last = t; }
      if (first === null) first = t;
      maxStall = Math.max(maxStall, t - last);
      last = t;
      const m = new Uint8Array(e.data);
      if (bad === null && cfg.verify) {
        const want = message(i, Math.min(cfg.messageSize, cfg.bytes - bytes));
        if (m.length !== want.length) bad = `message ${i}: ${m.length} bytes, want ${want.length}`;
        else {
          const a = new Uint32Array(m.buffer, 0, m.length >>> 2);
          const b = new Uint32Array(want.buffer, 0, want.length >>> 2);
          for (let k = 0; k < a.length; k++) if (a[k] !== b[k]) { bad = `message ${i}: content differs at word ${k}`; break; }
          for (let k = a.length * 4; k < m.length && bad === null; k++) if (m[k] !== want[k]) bad = `message ${i}: content differs at byte ${k}`;
        }
      }
      bytes += m.length;
      i += 1;
      if (bytes >= cfg.bytes) {
        send({ type: 'received', bytes, messages: i, seconds: (t - opened) / 1000,
          first_byte_ms: first - opened, max_stall_ms: maxStall, verified: cfg.verify ? bad === null : null, error: bad });
      }
    };
    dc.onclose = () => send({ type: 'log', text: `${now().toFixed(0)}ms channel closed after ${bytes} bytes` });
  }

  async function path() {
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); });
    if (!pair) return null;
    const c = (id) => { const s = stats.get(id); return s && `${s.candidateType} ${s.address}:${s.port}`; };
    return { local: c(pair.localCandidateId), remote: c(pair.remoteCandidateId),
      rtt_ms: pair.currentRoundTripTime !== undefined ? pair.currentRoundTripTime * 1000 : null };
  }

  window.c2c = { start, signal, path, now };
})();
