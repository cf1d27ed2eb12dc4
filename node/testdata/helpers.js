'use strict';
// Test helpers: PROXY headers written by hand, raw exchanges on real sockets.
const net = require('node:net');

// v2 builds a PROXY v2 header: cmd 0 LOCAL / 1 PROXY, fam 0x11 TCP4,
// 0x21 TCP6, 0x00 UNSPEC; addr is the address block (and TLVs).
function v2(cmd, fam, addr) {
  const h = Buffer.alloc(16);
  Buffer.from('0d0a0d0a000d0a515549540a', 'hex').copy(h);
  h[12] = 0x20 | cmd;
  h[13] = fam;
  h.writeUInt16BE(addr.length, 14);
  return Buffer.concat([h, addr]);
}

// v2from builds a v2 PROXY TCP4 header for a client ip:port.
function v2from(ip, port) {
  const a = Buffer.alloc(12);
  ip.split('.').forEach((b, i) => { a[i] = Number(b); });
  a.set([127, 0, 0, 1], 4);
  a.writeUInt16BE(port, 8);
  a.writeUInt16BE(3000, 10);
  return v2(1, 0x11, a);
}

// exchange connects to port, writes each chunk on its own (a turn of the
// event loop apart, so that they arrive as separate reads), and resolves
// with everything read until the server closes.
// With resetOk, a reset (the server closing while the client still writes)
// ends the exchange like a close instead of failing it.
function exchange(port, chunks, { gapMs = 5, resetOk = false } = {}) {
  return new Promise((resolve, reject) => {
    const c = net.connect(port, '127.0.0.1');
    const got = [];
    const done = () => resolve(Buffer.concat(got).toString('latin1'));
    const failed = (err) => (resetOk && ['ECONNRESET', 'EPIPE'].includes(err.code) ? done() : reject(err));
    c.on('data', (d) => got.push(d)).on('error', failed).on('close', done);
    (async () => {
      for (const chunk of chunks) {
        if (c.destroyed) return;
        c.write(chunk);
        await new Promise((r) => setTimeout(r, gapMs));
      }
    })();
  });
}

// once resolves with the first event of emitter, or rejects after ms.
function within(promise, ms, what) {
  let timer;
  return Promise.race([promise, new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  })]).finally(() => clearTimeout(timer));
}

module.exports = { v2, v2from, exchange, within };
