'use strict';
// A minimal PROXY protocol v1/v2 reader for net servers (no dependencies).
//
//   const front = acceptProxy(httpServer);   // httpServer never listens itself
//   front.listen(port, '127.0.0.1');
//
// Every connection to `front` must open with a PROXY header (as stickyd
// sends). The header is read and removed, socket.remoteAddress/remotePort
// are set to the client's, and the socket is handed to `target` through its
// 'connection' event with any bytes read past the header put back. A LOCAL
// header (a health check) keeps the socket's own addresses. A connection
// without a valid header within `timeout` ms is destroyed.
const net = require('node:net');

const V2_SIG = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');
const V1_MAX = 107; // longest v1 line, CRLF included
const V2_MAX = 16 + 4096; // generous for TLVs (AWS NLB sends a few bytes)

// parse returns null while buf may still grow into a header, else
// { length, local, address, port }. It throws on anything else.
function parse(buf) {
  if (buf[0] === 0x0d) {
    const n = Math.min(buf.length, 12);
    if (!buf.subarray(0, n).equals(V2_SIG.subarray(0, n))) throw new Error('bad v2 signature');
    if (buf.length < 16) return null;
    const length = 16 + buf.readUInt16BE(14);
    if (buf[12] >> 4 !== 2 || length > V2_MAX) throw new Error('bad v2 header');
    if (buf.length < length) return null;
    const cmd = buf[12] & 0x0f, fam = buf[13], body = buf.subarray(16, length);
    if (cmd === 0) return { length, local: true };
    if (cmd !== 1) throw new Error('bad v2 command');
    if (fam === 0x11 && body.length >= 12) return { length, address: [...body.subarray(0, 4)].join('.'), port: body.readUInt16BE(8) };
    if (fam === 0x21 && body.length >= 36) return { length, address: ipv6(body.subarray(0, 16)), port: body.readUInt16BE(32) };
    return { length, local: true }; // UNSPEC or unix: no client IP to report
  }
  const n = Math.min(buf.length, 6);
  if (buf.toString('latin1', 0, n) !== 'PROXY '.slice(0, n)) throw new Error('no PROXY header');
  const end = buf.indexOf('\r\n');
  if (end < 0) {
    if (buf.length >= V1_MAX) throw new Error('v1 header too long');
    return null;
  }
  const [proto, src, , sport] = buf.toString('latin1', 6, end).split(' ');
  if (proto === 'UNKNOWN') return { length: end + 2, local: true };
  if (net.isIP(src) !== { TCP4: 4, TCP6: 6 }[proto]) throw new Error('bad v1 header');
  return { length: end + 2, address: canonical(src), port: Number(sport) };
}

function ipv6(b) {
  const groups = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i).toString(16));
  return canonical(groups.join(':'));
}

// canonical writes an IPv6 address in its short form, and an IPv4-mapped
// one (::ffff:a.b.c.d, as some proxies send) as plain IPv4.
function canonical(ip) {
  if (net.isIP(ip) !== 6) return ip;
  const short = new URL(`http://[${ip}]`).hostname.slice(1, -1);
  const m = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(short);
  if (!m) return short;
  const [hi, lo] = [parseInt(m[1], 16), parseInt(m[2], 16)];
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

function acceptProxy(target, { timeout = 5000 } = {}) {
  return net.createServer((socket) => {
    let buf = Buffer.alloc(0);
    const fail = () => socket.destroy();
    const onReadable = () => {
      for (let chunk; (chunk = socket.read()) !== null;) {
        buf = Buffer.concat([buf, chunk]);
        let header;
        try { header = parse(buf); } catch { return fail(); }
        if (!header) continue;
        socket.removeListener('readable', onReadable).removeListener('timeout', fail).removeListener('error', fail);
        socket.setTimeout(0);
        if (buf.length > header.length) socket.unshift(buf.subarray(header.length));
        if (!header.local) {
          const family = net.isIP(header.address) === 6 ? 'IPv6' : 'IPv4';
          Object.defineProperties(socket, {
            remoteAddress: { value: header.address, configurable: true },
            remotePort: { value: header.port, configurable: true },
            remoteFamily: { value: family, configurable: true },
          });
        }
        return target.emit('connection', socket);
      }
    };
    socket.setTimeout(timeout);
    socket.on('error', fail).on('timeout', fail).on('readable', onReadable);
  });
}

module.exports = { acceptProxy, parse };
