'use strict';
// node --test: the PROXY reader in front of a plain http server, on real sockets.
const assert = require('node:assert/strict');
const http = require('node:http');
const net = require('node:net');
const { after, before, test } = require('node:test');
const { acceptProxy, parse } = require('./proxy-protocol');

let front;
before(async () => {
  const app = http.createServer((req, res) => {
    let size = 0;
    req.on('data', (d) => { size += d.length; });
    req.on('end', () => res.end(`${req.socket.remoteAddress} ${req.socket.remotePort} ${size}\n`));
  });
  front = acceptProxy(app, { timeout: 500 });
  await new Promise((resolve) => front.listen(0, '127.0.0.1', resolve));
});
after(() => front.close());

// exchange writes each chunk (pausing between them) and returns all bytes read until close.
function exchange(chunks) {
  return new Promise((resolve, reject) => {
    const c = net.connect(front.address().port, '127.0.0.1');
    const got = [];
    c.on('data', (d) => got.push(d)).on('error', reject).on('close', () => resolve(Buffer.concat(got).toString()));
    (async () => {
      for (const chunk of chunks) {
        c.write(chunk);
        await new Promise((r) => setTimeout(r, 10));
      }
    })();
  });
}

const GET = 'GET / HTTP/1.1\r\nHost: x\r\n\r\n';
const GET_CLOSE = 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n';

function v2(cmd, fam, addr) {
  const h = Buffer.from('0d0a0d0a000d0a515549540a000000', 'hex');
  h[12] = 0x20 | cmd;
  h[13] = fam;
  const len = Buffer.alloc(2);
  len.writeUInt16BE(addr.length);
  return Buffer.concat([h.subarray(0, 14), len, addr]);
}

test('v1 header and two keep-alive requests in one write', async () => {
  const out = await exchange([`PROXY TCP4 203.0.113.7 127.0.0.1 40000 3000\r\n${GET}${GET_CLOSE}`]);
  assert.equal((out.match(/203\.0\.113\.7 40000 0/g) || []).length, 2, out);
});

test('header split across writes, request later', async () => {
  const out = await exchange(['PROXY TCP6 2001:db8:0:0:0:0:0:7 ', '::1 40001 3000\r', '\n', GET_CLOSE]);
  assert.match(out, /2001:db8::7 40001 0/);
});

test('v2 IPv4 with a 200 KB body', async () => {
  const addr = Buffer.from([203, 0, 113, 9, 127, 0, 0, 1, 0x9c, 0x42, 0x0b, 0xb8, 0x03, 0x00, 0x01, 0x00]); // + TLV
  const payload = 'x'.repeat(200 * 1024);
  const req = `POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: ${payload.length}\r\n\r\n${payload}`;
  const out = await exchange([Buffer.concat([v2(1, 0x11, addr), Buffer.from(req)])]);
  assert.match(out, new RegExp(`203\\.0\\.113\\.9 40002 ${payload.length}`));
});

test('v2 LOCAL keeps the socket address', async () => {
  const out = await exchange([v2(0, 0x00, Buffer.alloc(0)), GET_CLOSE]);
  assert.match(out, /127\.0\.0\.1 \d+ 0/);
});

test('no header: closed without a response; the listener survives', async () => {
  assert.equal(await exchange([GET]), '');
  assert.equal(await exchange([]), ''); // connect-and-close (a readiness probe), then a timeout
  assert.match(await exchange([`PROXY TCP4 198.51.100.1 127.0.0.1 1 2\r\n${GET_CLOSE}`]), /198\.51\.100\.1 1 0/);
});

test('parse writes addresses in canonical form', () => {
  assert.equal(parse(Buffer.from('PROXY TCP6 ::ffff:192.0.2.5 ::1 1 2\r\n')).address, '192.0.2.5');
  const mapped = Buffer.alloc(36);
  mapped.writeUInt16BE(0xffff, 10);
  mapped.set([198, 51, 100, 3], 12);
  assert.equal(parse(v2(1, 0x21, mapped)).address, '198.51.100.3');
});

test('parse rejects junk and waits for more', () => {
  assert.equal(parse(Buffer.from('PROX')), null);
  assert.equal(parse(Buffer.from('\r\n\r\n\0\r\nQUIT\n\x21\x11\0')), null);
  assert.throws(() => parse(Buffer.from('GET / HTTP/1.1')));
  assert.throws(() => parse(Buffer.from('PROXY TCP4 ::1 ::1 1 2\r\n')));
  assert.throws(() => parse(Buffer.from(`PROXY ${'x'.repeat(120)}`)));
});
