'use strict';
// stickyd-worker: the worker side of stickyd in one line.
//
//   require('stickyd-worker').listen(server);
//
// The server (http, https, net, an express app, a socket.io Server) listens
// where stickyd says (PORT on 127.0.0.1, or the Unix socket SOCKET), reads
// the PROXY v1/v2 header stickyd opens every connection with, and sets
// socket.remoteAddress/remotePort to the client's before any 'connection'
// listener sees the socket. On SIGTERM it stops accepting, lets the open
// connections finish, and exits.
//
// The header's fields are decoded by proxy-protocol-js. Where the header ends
// is found here: the library has no incremental API, and for v2 it ignores
// the length field (TLVs, such as the ones stickyd --forward-tlvs passes on,
// would be taken for the first request's bytes).
const cluster = require('node:cluster');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const pp = require('proxy-protocol-js');

const V2_SIG = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');
const V1_SIG = Buffer.from('PROXY ', 'latin1');
const V1_MAX = 107; // the longest v1 line, CRLF included (spec, section 2.1)
const LOG_EVERY_MS = 10000; // at most one header-error line per reason this often
const kHeader = Symbol('stickyd-worker.header');

/** Error for a connection whose PROXY header is missing or broken. */
class HeaderError extends Error {
  constructor(reason, detail) {
    super(detail ? `${reason}: ${detail}` : reason);
    this.name = 'HeaderError';
    this.reason = reason;
  }
}

// frame returns the header's length once buf holds a whole header, 0 while
// buf may still grow into one; it throws a HeaderError otherwise.
function frame(buf) {
  if (buf[0] === V2_SIG[0]) {
    const n = Math.min(buf.length, V2_SIG.length);
    if (!buf.subarray(0, n).equals(V2_SIG.subarray(0, n))) throw new HeaderError('no PROXY header', preview(buf));
    if (buf.length < 16) return 0;
    const length = 16 + buf.readUInt16BE(14);
    return buf.length >= length ? length : 0;
  }
  const n = Math.min(buf.length, V1_SIG.length);
  if (!buf.subarray(0, n).equals(V1_SIG.subarray(0, n))) throw new HeaderError('no PROXY header', preview(buf));
  const end = buf.subarray(0, V1_MAX).indexOf('\r\n');
  if (end >= 0) return end + 2;
  if (buf.length >= V1_MAX) throw new HeaderError('broken PROXY header', 'v1 line longer than 107 bytes');
  return 0;
}

function preview(buf) {
  return JSON.stringify(buf.toString('latin1', 0, Math.min(buf.length, 24)));
}

/**
 * parse decodes one whole PROXY header (as framed by frame). It returns
 * { version, local, address, port, family }; local is true for a v2 LOCAL,
 * a v1 UNKNOWN, or an address family with no IP (the socket's own address
 * stays). Throws a HeaderError on a malformed header.
 */
function parse(header) {
  try {
    return header[0] === V2_SIG[0] ? parseV2(header) : parseV1(header);
  } catch (err) {
    if (err instanceof HeaderError) throw err;
    throw new HeaderError('broken PROXY header', err.message || String(err));
  }
}

function parseV1(header) {
  const proto = header.toString('latin1', 6, header.length - 2).split(' ')[0];
  if (proto === 'UNKNOWN') return { version: 1, local: true };
  const h = pp.V1BinaryProxyProtocol.parse(header);
  const family = { TCP4: 4, TCP6: 6 }[h.inetProtocol];
  const { ipAddress, port } = h.source;
  if (net.isIP(ipAddress) !== family || port > 65535) throw new HeaderError('broken PROXY header', `v1 source ${ipAddress} ${port}`);
  return client(1, ipAddress, port);
}

function parseV2(header) {
  const h = pp.V2ProxyProtocol.parse(new Uint8Array(header.buffer, header.byteOffset, header.length));
  const a = h.proxyAddress;
  if (h.command === pp.Command.LOCAL) return { version: 2, local: true };
  if (a instanceof pp.IPv4ProxyAddress) return client(2, a.sourceAddress.address.join('.'), a.sourcePort);
  if (a instanceof pp.IPv6ProxyAddress) {
    const b = Buffer.from(a.sourceAddress.address);
    const groups = [];
    for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i).toString(16));
    return client(2, groups.join(':'), a.sourcePort);
  }
  return { version: 2, local: true }; // UNSPEC or a Unix address: no client IP
}

// client builds the parse result; IPv6 addresses in short form, and
// IPv4-mapped ones (::ffff:a.b.c.d, as some proxies send) as plain IPv4.
function client(version, ip, port) {
  let address = ip;
  if (net.isIP(ip) === 6) {
    address = new URL(`http://[${ip}]`).hostname.slice(1, -1);
    const m = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(address);
    if (m) {
      const [hi, lo] = [parseInt(m[1], 16), parseInt(m[2], 16)];
      address = `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
    }
  }
  return { version, local: false, address, port, family: net.isIP(address) === 6 ? 'IPv6' : 'IPv4' };
}

// setPeer makes the socket report the client's address, also through
// wrappers that ask the handle (a TLSSocket on top of it).
function setPeer(socket, h) {
  const peer = { address: h.address, port: h.port, family: h.family };
  for (const [key, value] of [['remoteAddress', peer.address], ['remotePort', peer.port], ['remoteFamily', peer.family]]) {
    Object.defineProperty(socket, key, { value, configurable: true, enumerable: true });
  }
  socket._peername = peer;
  if (socket._handle && typeof socket._handle.getpeername === 'function') {
    socket._handle.getpeername = (out) => {
      Object.assign(out, peer);
      return 0;
    };
  }
}

// readHeader reads the PROXY header off a fresh socket, puts back what
// follows it, and calls done(null, header) or done(err) (the socket is then
// to be destroyed).
function readHeader(socket, timeout, done) {
  let buf = Buffer.alloc(0);
  let finished = false;
  let timer = null;
  const finish = (err, header) => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    socket.removeListener('readable', onReadable).removeListener('error', onError).removeListener('end', onEnd);
    done(err, header);
  };
  const onReadable = () => {
    for (let chunk; !finished && (chunk = socket.read()) !== null;) {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      let length;
      try {
        length = frame(buf);
        if (!length) continue;
        const header = parse(buf.subarray(0, length));
        if (buf.length > length) socket.unshift(buf.subarray(length));
        return finish(null, header);
      } catch (err) {
        return finish(err);
      }
    }
  };
  // A peer that goes away before sending a byte is a port probe (stickyd's
  // readiness check, a TCP health check): closed without a log line.
  const gone = (detail) => {
    const err = new HeaderError(buf.length ? 'connection closed in the PROXY header' : 'probe', detail);
    err.quiet = !buf.length;
    finish(err);
  };
  const onError = (err) => gone(err.code || err.message);
  const onEnd = () => gone('closed by the peer');
  // A deadline for the whole header, not an idle timeout: a peer sending a
  // byte now and then cannot hold the connection.
  timer = setTimeout(() => finish(new HeaderError('PROXY header timeout', `no complete header within ${timeout} ms`)), timeout);
  socket.on('readable', onReadable).on('error', onError).on('end', onEnd);
}

// rateLimited returns log(reason, line): the first line per reason, then at
// most one per LOG_EVERY_MS with the count of the lines left out.
function rateLimited(log) {
  const last = new Map(); // reason -> { at, dropped }
  return (reason, line) => {
    const now = Date.now();
    const s = last.get(reason);
    if (s && now - s.at < LOG_EVERY_MS) {
      s.dropped++;
      return;
    }
    const more = s && s.dropped ? ` (${s.dropped} more like it in the last ${Math.round((now - s.at) / 1000)} s)` : '';
    last.set(reason, { at: now, dropped: 0 });
    log(`${line}${more}`);
  };
}

/**
 * acceptProxy makes server read a PROXY header on every connection before
 * any of its 'connection' listeners (present or future) runs. Connections
 * without a valid header within options.headerTimeout are closed, with a
 * rate-limited log line. Returns server.
 */
function acceptProxy(server, options = {}) {
  const timeout = options.headerTimeout ?? 5000;
  const log = rateLimited(options.log || ((line) => console.error(line)));
  const emit = server.emit;
  server.emit = function emitAfterHeader(event, socket, ...rest) {
    if (event !== 'connection' || !(socket instanceof net.Socket) || socket[kHeader]) return emit.call(this, event, socket, ...rest);
    readHeader(socket, timeout, (err, header) => {
      if (err) {
        if (!err.quiet) log(err.reason, `stickyd-worker: closed a connection from ${socket.remoteAddress}:${socket.remotePort}: ${err.message}. ` +
          'Every connection must open with a PROXY v1/v2 header: run this app behind stickyd with --send-proxy v2 (the default) or v1, ' +
          'or call listen(server, { proxyHeader: false }) when stickyd runs with --send-proxy none.');
        socket.destroy();
        return;
      }
      socket[kHeader] = header;
      socket.proxyHeader = header;
      if (!header.local) setPeer(socket, header);
      emit.call(this, 'connection', socket, ...rest);
    });
    return true;
  };
  return server;
}

// toServer turns what listen was given into a net.Server: a server, a
// socket.io Server (its httpServer), or a request listener (an express app).
function toServer(target) {
  if (target instanceof net.Server) return target;
  if (target && target.httpServer instanceof net.Server) return target.httpServer;
  if (typeof target === 'function') return http.createServer(target);
  throw new TypeError('stickyd-worker: listen wants an http/https/net server, a socket.io Server attached to one, or an express app');
}

// notClustered refuses a server in a worker of Node's cluster module under
// stickyd: the app still forks its own workers (cluster.fork), so this
// process's listen goes through its cluster primary, which shares the port
// among its forks round-robin. A client's requests would then reach
// different processes (socket.io: "Session ID unknown", 400), and nothing
// else would say why.
function notClustered(env) {
  if (!cluster.isWorker || env.STICKYD_WORKER_ID === undefined) return;
  throw new Error('stickyd-worker: this process is a worker of Node\'s cluster module (the app calls cluster.fork()), ' +
    'under stickyd, which starts the workers itself. cluster would share this worker\'s port among its own forks, round-robin, ' +
    'and send one client\'s requests to different processes. Fix: remove the cluster.isPrimary / cluster.fork() branch and ' +
    'keep the worker branch alone; stickyd --workers N (or [workers] count) is the number of workers (see MIGRATING.md).');
}

// channelLost says why this process has no Node IPC channel though stickyd
// gave its worker one (STICKYD_IPC=node): a wrapper that is itself Node
// (npm start, yarn start) opened the channel and did not pass it on. The
// app's @socket.io/cluster-adapter then cannot reach the other workers
// (process.send is undefined: it throws, or an app that checks for it
// broadcasts to its own clients alone). Null when all is well.
function channelLost(env) {
  if (env.STICKYD_IPC !== 'node' || env.STICKYD_WORKER_ID === undefined || typeof process.send === 'function') return null;
  return 'stickyd-worker: stickyd gave this worker a Node IPC channel (process.send, for @socket.io/cluster-adapter), ' +
    'but this process has none: a wrapper between stickyd and node took it (npm start, yarn start, a script that starts node). ' +
    'Broadcasts with the cluster adapter cannot reach the other workers. Fix: start node directly in stickyd\'s ' +
    '[workers] command (command = ["node", "server.js"]), or set ipc = "none" if the app does not use the adapter.';
}

{ // once, when the app loads the package: before it makes its adapter
  const lost = channelLost(process.env);
  if (lost) console.error(lost);
}

// where returns the listen arguments stickyd's environment asks for.
function where(env, asked) {
  if (env.SOCKET) return [env.SOCKET];
  if (env.PORT) return [Number(env.PORT), '127.0.0.1'];
  const example = asked ? `stickyd --listen :${asked} --workers 4 -- node ${process.argv[1] || 'app.js'}` : 'stickyd --workers 4 -- node app.js';
  throw new Error(`stickyd-worker: neither PORT nor SOCKET is set: run this app under stickyd (${example}), or set PORT`);
}

/**
 * onSIGTERM: stop accepting, let the open connections finish (idle HTTP
 * keep-alive ones are closed), then exit 0, unless the app has a SIGTERM
 * handler of its own, which then decides when to exit.
 */
function onSIGTERM(server, log) {
  const handler = () => {
    const appHandles = process.listenerCount('SIGTERM') > 0; // ours is gone already (once)
    log(`stickyd-worker: SIGTERM: not accepting; waiting for open connections (pid ${process.pid})`);
    server.close(() => {
      if (!appHandles) process.exit(0);
    });
    if (typeof server.closeIdleConnections === 'function') server.closeIdleConnections();
  };
  process.once('SIGTERM', handler);
  server.once('close', () => process.removeListener('SIGTERM', handler));
}

/**
 * listen(server, [port], [options], [callback]) makes server a stickyd
 * worker and returns the net.Server that listens. port is ignored under
 * stickyd (PORT/SOCKET decide); it is accepted so that sticky-session's
 * listen(server, port) keeps working. Options: proxyHeader (default true),
 * headerTimeout (ms, default 5000), shutdown (handle SIGTERM, default true),
 * log (a function of one line, default console.error), env (default
 * process.env).
 */
function listen(target, ...args) {
  const asked = typeof args[0] === 'number' || typeof args[0] === 'string' ? args.shift() : undefined;
  const options = args[0] && typeof args[0] === 'object' ? args.shift() : {};
  const callback = typeof args[0] === 'function' ? args[0] : undefined;
  const server = toServer(target);
  const log = options.log || ((line) => console.error(line));
  const env = options.env || process.env;
  notClustered(env);
  const at = where(env, asked);
  if (options.proxyHeader !== false) acceptProxy(server, options);
  if (options.shutdown !== false) onSIGTERM(server, log);
  if (at.length === 1) fs.rmSync(at[0], { force: true }); // a dead worker's socket file
  server.listen(...at, callback);
  return server;
}

// The names socketio-sticky-session's options become in stickyd.
const FLAG_OF = {
  num: '--workers N', proxy: '--accept-proxy CIDR or --client-ip-header NAME', header: '--client-ip-header NAME',
  ignoreMissingHeader: '--ignore-missing-header', workers: '--workers N', loadBalancingMethod: 'none (stickyd hashes the client IP)',
};

/**
 * sticky([options], serverOrFactory) keeps the shape of
 * socketio-sticky-session and sticky-session's old API:
 * sticky(options, () => server).listen(port, cb). Their options are stickyd
 * flags now (MIGRATING.md); worker 0 names them once in the log.
 */
function sticky(options, serverOrFactory) {
  if (serverOrFactory === undefined) [options, serverOrFactory] = [{}, options];
  const target = typeof serverOrFactory === 'function' && !(serverOrFactory instanceof net.Server) && serverOrFactory.length === 0
    ? serverOrFactory() : serverOrFactory;
  const given = options && typeof options === 'object' ? Object.keys(options).filter((k) => FLAG_OF[k]) : [];
  if (options && options.num === Number(process.env.STICKYD_WORKERS)) given.splice(given.indexOf('num'), 1); // --workers says the same
  if (given.length && (process.env.STICKYD_WORKER_ID ?? '0') === '0') {
    console.error(`stickyd-worker: option(s) ${given.join(', ')} are stickyd's job now: ${given.map((k) => `${k} -> ${FLAG_OF[k]}`).join('; ')} (see MIGRATING.md)`);
  }
  return { listen: (...args) => listen(target, ...args) };
}

module.exports = sticky;
module.exports.sticky = sticky;
module.exports.listen = listen;
module.exports.acceptProxy = acceptProxy;
module.exports.parse = parse;
module.exports.frame = frame;
module.exports.HeaderError = HeaderError;
module.exports.channelLost = channelLost;
