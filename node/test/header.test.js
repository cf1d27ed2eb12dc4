'use strict';
// frame and parse on hand-written headers (bytes from the spec, not from the
// library that parses them).
const assert = require('node:assert/strict');
const { test } = require('node:test');
const { frame, parse, HeaderError } = require('..');
const { v2 } = require('../testdata/helpers');

const whole = (buf) => parse(buf.subarray(0, frame(buf)));

test('v1 TCP4, TCP6, mapped, UNKNOWN', () => {
  assert.deepEqual(whole(Buffer.from('PROXY TCP4 203.0.113.7 127.0.0.1 40000 3000\r\nGET')),
    { version: 1, local: false, address: '203.0.113.7', port: 40000, family: 'IPv4' });
  assert.deepEqual(whole(Buffer.from('PROXY TCP6 2001:db8:0:0::1 ::1 40000 3000\r\n')),
    { version: 1, local: false, address: '2001:db8::1', port: 40000, family: 'IPv6' });
  assert.equal(whole(Buffer.from('PROXY TCP6 ::ffff:198.51.100.9 ::1 1 2\r\n')).address, '198.51.100.9');
  assert.deepEqual(whole(Buffer.from('PROXY UNKNOWN\r\n')), { version: 1, local: true });
  assert.deepEqual(whole(Buffer.from('PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n')), { version: 1, local: true });
});

test('v2 PROXY TCP4 and TCP6, with TLVs after the addresses', () => {
  const tlv = Buffer.from([0xea, 0x00, 0x03, 0x01, 0x02, 0x03]);
  const h = v2(1, 0x11, Buffer.concat([Buffer.from([198, 51, 100, 7, 127, 0, 0, 1, 0x9c, 0x40, 0x0b, 0xb8]), tlv]));
  assert.equal(frame(Buffer.concat([h, Buffer.from('GET /')])), h.length);
  assert.deepEqual(whole(h), { version: 2, local: false, address: '198.51.100.7', port: 40000, family: 'IPv4' });
  const a6 = Buffer.alloc(36);
  a6.write('20010db8000000000000000000000001', 0, 'hex');
  a6[31] = 1;
  a6.writeUInt16BE(5555, 32);
  assert.deepEqual(whole(v2(1, 0x21, a6)), { version: 2, local: false, address: '2001:db8::1', port: 5555, family: 'IPv6' });
  a6.write('00000000000000000000ffffc0000201', 0, 'hex'); // ::ffff:192.0.2.1
  assert.equal(whole(v2(1, 0x21, a6)).address, '192.0.2.1');
});

test('v2 LOCAL (with or without dummy addresses) and UNSPEC keep the socket address', () => {
  assert.deepEqual(whole(v2(0, 0x00, Buffer.alloc(0))), { version: 2, local: true });
  assert.deepEqual(whole(v2(0, 0x11, Buffer.from([1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]))), { version: 2, local: true });
  assert.deepEqual(whole(v2(1, 0x00, Buffer.alloc(0))), { version: 2, local: true });
});

test('frame waits for more bytes while a header may still come', () => {
  const full = Buffer.concat([v2(1, 0x11, Buffer.alloc(12)), Buffer.from('x')]);
  for (let n = 1; n < full.length - 1; n++) assert.equal(frame(full.subarray(0, n)), 0, `v2 prefix of ${n}`);
  const line = Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n');
  for (let n = 1; n < line.length; n++) assert.equal(frame(line.subarray(0, n)), 0, `v1 prefix of ${n}`);
});

test('missing and broken headers are HeaderErrors', () => {
  const bad = [
    ['GET / HTTP/1.1\r\n', 'no PROXY header'],
    ['\r\n\r\n\x00\r\nQUIX', 'no PROXY header'],
    [`PROXY TCP4 ${'1'.repeat(120)}`, 'broken PROXY header'],
  ];
  for (const [input, reason] of bad) {
    assert.throws(() => frame(Buffer.from(input, 'latin1')), (e) => e instanceof HeaderError && e.reason === reason, input);
  }
  const broken = [
    Buffer.from('PROXY TCP4 999.1.1.1 127.0.0.1 1 2\r\n'),
    Buffer.from('PROXY TCP4 ::1 127.0.0.1 1 2\r\n'),
    Buffer.from('PROXY TCP4 1.1.1.1 127.0.0.1 70000 2\r\n'),
    Buffer.from('PROXY TCP4 1.1.1.1 127.0.0.1 x 2\r\n'),
    Buffer.from('PROXY SCTP 1.1.1.1 127.0.0.1 1 2\r\n'),
    v2(1, 0x11, Buffer.alloc(4)), // address block too short
    v2(2, 0x11, Buffer.alloc(12)), // command 2
    Buffer.concat([v2(1, 0x11, Buffer.alloc(12)).subarray(0, 12), Buffer.from([0x31, 0x11, 0, 12]), Buffer.alloc(12)]), // version 3
  ];
  for (const h of broken) {
    assert.throws(() => whole(h), (e) => e instanceof HeaderError && e.reason === 'broken PROXY header', JSON.stringify(h.toString('latin1')));
  }
});

test('why the framing is ours: proxy-protocol-js alone takes v2 TLVs for payload', () => {
  const pp = require('proxy-protocol-js');
  const tlv = Buffer.from([0xea, 0x00, 0x03, 0x01, 0x02, 0x03]); // an AWS NLB VPC endpoint TLV
  const h = v2(1, 0x11, Buffer.concat([Buffer.from([198, 51, 100, 7, 127, 0, 0, 1, 0x9c, 0x40, 0x0b, 0xb8]), tlv]));
  const lib = pp.V2ProxyProtocol.parse(new Uint8Array(Buffer.concat([h, Buffer.from('GET')])));
  // The library ignores the length field: the TLV reaches the "data" after the header.
  assert.deepEqual(Buffer.from(lib.data), Buffer.concat([tlv, Buffer.from('GET')]));
  assert.equal(frame(Buffer.concat([h, Buffer.from('GET')])), h.length); // ours ends the header after the TLV
});
