'use strict';
// listen() in front of real http, https, net, express, ws and socket.io
// servers, on real loopback sockets, with headers written by hand.
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const https = require('node:https');
const net = require('node:net');
const path = require('node:path');
const { test } = require('node:test');
const express = require('express');
const { WebSocketServer, WebSocket } = require('ws');
const { Server } = require('socket.io');
const { io } = require('socket.io-client');
const { listen } = require('..');
const { v2, v2from, exchange, within } = require('../testdata/helpers');

const GET = 'GET / HTTP/1.1\r\nHost: x\r\n\r\n';
const GET_CLOSE = 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n';
const V1 = 'PROXY TCP4 203.0.113.7 127.0.0.1 40000 3000\r\n';

// start listens with the package on an ephemeral port, collecting log lines.
async function start(t, target, options = {}) {
  const lines = [];
  const server = listen(target, { env: { PORT: '0' }, shutdown: false, log: (l) => lines.push(l), ...options });
  await new Promise((resolve) => server.once('listening', resolve));
  t.after(() => {
    server.closeAllConnections?.();
    server.close();
  });
  return { port: server.address().port, lines };
}

// echoAddr answers every request with "<remoteAddress> <remotePort> <body size>".
function echoAddr(req, res) {
  let size = 0;
  req.on('data', (d) => { size += d.length; });
  req.on('end', () => res.end(`${req.socket.remoteAddress} ${req.socket.remotePort} ${size}\n`));
}

test('http: v1 header then two keep-alive requests in one write', async (t) => {
  const { port } = await start(t, http.createServer(echoAddr));
  const out = await within(exchange(port, [`${V1}${GET}${GET_CLOSE}`]), 10000, 'exchange');
  assert.equal((out.match(/203\.0\.113\.7 40000 0/g) || []).length, 2, out);
});

test('http: a v2 header split byte by byte, then a pipelined request', async (t) => {
  const { port } = await start(t, http.createServer(echoAddr));
  const h = v2from('198.51.100.9', 5555);
  const chunks = [...h].map((b) => Buffer.from([b]));
  const out = await within(exchange(port, [...chunks, GET, GET_CLOSE], { gapMs: 2 }), 10000, 'exchange');
  assert.equal((out.match(/198\.51\.100\.9 5555 0/g) || []).length, 2, out);
});

test('http: a 300 KB body sent in the same write as the header arrives whole', async (t) => {
  const { port } = await start(t, http.createServer(echoAddr));
  const body = Buffer.alloc(300 * 1024, 'a');
  const req = Buffer.concat([v2from('192.0.2.44', 1234), Buffer.from(`POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: ${body.length}\r\n\r\n`), body]);
  const out = await within(exchange(port, [req]), 10000, 'exchange');
  assert.match(out, new RegExp(`192\\.0\\.2\\.44 1234 ${body.length}`), out.slice(0, 300));
});

test('a LOCAL header keeps the socket address', async (t) => {
  const { port } = await start(t, http.createServer(echoAddr));
  const out = await within(exchange(port, [Buffer.concat([v2(0, 0, Buffer.alloc(0)), Buffer.from(GET_CLOSE)])]), 10000, 'exchange');
  assert.match(out, /\n127\.0\.0\.1 \d+ 0\n/, out);
  const out1 = await within(exchange(port, [`PROXY UNKNOWN\r\n${GET_CLOSE}`]), 10000, 'exchange');
  assert.match(out1, /\n127\.0\.0\.1 \d+ 0\n/, out1);
});

test('missing header, broken header, header timeout: closed, one log line each, others served', async (t) => {
  let requests = 0;
  const server = http.createServer((req, res) => { requests++; echoAddr(req, res); });
  const { port, lines } = await start(t, server, { headerTimeout: 300 });
  assert.equal(await within(exchange(port, [GET]), 5000, 'missing'), '');
  assert.equal(await within(exchange(port, ['PROXY TCP4 1.2.3.4 nonsense\r\n', GET]), 5000, 'broken'), '');
  assert.equal(await within(exchange(port, ['PROXY TCP4 1.2.3.4']), 5000, 'timeout'), '');
  assert.equal(await within(exchange(port, [GET]), 5000, 'missing again'), ''); // rate-limited: no second line
  assert.equal(requests, 0);
  assert.equal(lines.length, 3, lines.join('\n'));
  assert.match(lines[0], /closed a connection from 127\.0\.0\.1:\d+: no PROXY header: "GET \/ HTTP\/1\.1.*--send-proxy v2/);
  assert.match(lines[1], /broken PROXY header/);
  assert.match(lines[2], /PROXY header timeout: no complete header within 300 ms/);
  const out = await within(exchange(port, [`${V1}${GET_CLOSE}`]), 5000, 'good');
  assert.match(out, /203\.0\.113\.7 40000 0/);
});

test('https: the header precedes the TLS handshake; req.socket is the client', async (t) => {
  const dir = path.join(__dirname, '..', 'testdata');
  const tls = { key: fs.readFileSync(path.join(dir, 'key.pem')), cert: fs.readFileSync(path.join(dir, 'cert.pem')) };
  const { port } = await start(t, https.createServer(tls, echoAddr));
  const agent = new https.Agent({ ca: tls.cert });
  agent.createConnection = (opts, cb) => {
    const raw = net.connect(port, '127.0.0.1');
    raw.write(v2from('203.0.113.99', 4242));
    return require('node:tls').connect({ socket: raw, ca: tls.cert, servername: 'localhost' }, cb);
  };
  const body = await within(new Promise((resolve, reject) => {
    https.get({ host: '127.0.0.1', port, agent }, (res) => {
      let s = '';
      res.on('data', (d) => { s += d; }).on('end', () => resolve(s));
    }).on('error', reject);
  }), 10000, 'https get');
  assert.equal(body, '203.0.113.99 4242 0\n');
});

test('net: a plain TCP server sees the client and the bytes after the header', async (t) => {
  const server = net.createServer((s) => {
    s.once('data', (d) => s.end(`${s.remoteAddress}:${s.remotePort} ${d}`));
  });
  const { port } = await start(t, server);
  const out = await within(exchange(port, [Buffer.concat([v2from('192.0.2.5', 999), Buffer.from('hello')])]), 5000, 'net');
  assert.equal(out, '192.0.2.5:999 hello');
});

test('express: req.ip and req.socket.remoteAddress are the client', async (t) => {
  const app = express();
  app.get('/', (req, res) => res.send(`${req.ip} ${req.socket.remoteAddress}`));
  const server = http.createServer(app);
  const { port } = await start(t, server);
  const out = await within(exchange(port, [`PROXY TCP6 2001:db8::7 ::1 1 2\r\n${GET_CLOSE}`]), 5000, 'express');
  assert.match(out, /\r\n\r\n2001:db8::7 2001:db8::7$/);
  assert.ok(listen.length >= 1);
});

test('express app passed directly', async (t) => {
  const app = express();
  app.get('/', (req, res) => res.send(req.socket.remoteAddress));
  const lines = [];
  const server = listen(app, { env: { PORT: '0' }, shutdown: false, log: (l) => lines.push(l) });
  await new Promise((resolve) => server.once('listening', resolve));
  t.after(() => { server.closeAllConnections(); server.close(); });
  const out = await within(exchange(server.address().port, [`${V1}${GET_CLOSE}`]), 5000, 'express app');
  assert.match(out, /203\.0\.113\.7$/);
});

test('ws: the upgrade request sees the client', async (t) => {
  const server = http.createServer();
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws, req) => ws.send(`${req.socket.remoteAddress} ${ws._socket.remoteAddress}`));
  const { port } = await start(t, server);
  t.after(() => { wss.close(); });
  const msg = await within(new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`, {
      createConnection: (opts) => {
        const s = net.connect(port, '127.0.0.1');
        s.write(v2from('198.51.100.200', 1000));
        return s;
      },
    });
    ws.on('message', (m) => { resolve(String(m)); ws.close(); }).on('error', reject);
  }), 5000, 'ws message');
  assert.equal(msg, '198.51.100.200 198.51.100.200');
});

// ProxyAgent opens every connection with a v1 header for ip, as stickyd's
// would; socket.io-client passes it to its polling requests.
class ProxyAgent extends http.Agent {
  constructor(ip) { super({ keepAlive: true }); this.ip = ip; }
  createConnection(opts, cb) {
    const s = net.connect(opts.port, opts.host);
    s.write(`PROXY TCP4 ${this.ip} 127.0.0.1 ${40000 + Math.floor(Math.random() * 20000)} ${opts.port}\r\n`);
    if (cb) process.nextTick(cb, null, s);
    return s;
  }
}

test('socket.io: polling then websocket upgrade; handshake.address is the client on both', async (t) => {
  const server = http.createServer();
  const ioServer = new Server(server);
  ioServer.on('connection', (socket) => {
    socket.emit('welcome', { address: socket.handshake.address, transport: socket.conn.transport.name });
    socket.on('where', (ack) => ack({ address: socket.conn.remoteAddress, transport: socket.conn.transport.name }));
  });
  const { port } = await start(t, ioServer);
  t.after(() => { ioServer.close(); });
  const agent = new ProxyAgent('203.0.113.50');
  const client = io(`http://127.0.0.1:${port}`, {
    forceNew: true, reconnection: false, agent, // the websocket goes through the agent too
  });
  t.after(() => { client.close(); });
  const welcome = await within(new Promise((resolve, reject) => {
    client.on('welcome', resolve).on('connect_error', reject);
  }), 10000, 'welcome');
  assert.deepEqual(welcome, { address: '203.0.113.50', transport: 'polling' });
  if (client.io.engine.transport.name !== 'websocket') {
    await within(new Promise((resolve) => client.io.engine.once('upgrade', resolve)), 10000, 'upgrade');
  }
  const where = await within(client.timeout(5000).emitWithAck('where'), 10000, 'ack');
  assert.deepEqual(where, { address: '203.0.113.50', transport: 'websocket' });
});

test('SOCKET: listens on the Unix socket, a stale file is replaced', async (t) => {
  const sock = path.join(fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'sw-')), 'w.sock');
  fs.writeFileSync(sock, 'stale');
  const server = http.createServer((req, res) => res.end(String(req.socket.remoteAddress)));
  listen(server, { env: { SOCKET: sock }, shutdown: false, log: () => {} });
  await new Promise((resolve) => server.once('listening', resolve));
  t.after(() => { server.closeAllConnections(); server.close(); });
  const out = await within(new Promise((resolve, reject) => {
    const c = net.connect(sock);
    const got = [];
    c.on('data', (d) => got.push(d)).on('close', () => resolve(Buffer.concat(got).toString())).on('error', reject);
    c.write(`${V1}${GET_CLOSE}`);
  }), 5000, 'unix');
  assert.match(out, /203\.0\.113\.7$/);
});

test('neither PORT nor SOCKET: a clear error naming the stickyd command', () => {
  assert.throws(() => listen(http.createServer(), 3000, { env: {} }), /neither PORT nor SOCKET is set: run this app under stickyd \(stickyd --listen :3000 --workers 4 -- node /);
});

test('sticky(options, factory).listen(port, cb): the socketio-sticky-session shape', async (t) => {
  const saved = { PORT: process.env.PORT, STICKYD_WORKERS: process.env.STICKYD_WORKERS };
  Object.assign(process.env, { PORT: '0', STICKYD_WORKERS: '4' });
  t.after(() => {
    for (const [k, v] of Object.entries(saved)) if (v === undefined) delete process.env[k]; else process.env[k] = v;
  });
  const sticky = require('..');
  let server;
  const listening = new Promise((resolve) => {
    sticky({ num: 4 }, () => {
      server = http.createServer(echoAddr);
      return server;
    }).listen(3000, resolve);
  });
  await within(listening, 5000, 'listening callback');
  t.after(() => { server.closeAllConnections(); server.close(); });
  assert.equal(server.address().address, '127.0.0.1');
  const out = await within(exchange(server.address().port, [`${V1}${GET_CLOSE}`]), 5000, 'request');
  assert.match(out, /203\.0\.113\.7 40000 0/);
});

test('proxyHeader: false (stickyd --send-proxy none): plain connections, the socket address', async (t) => {
  const { port, lines } = await start(t, http.createServer(echoAddr), { proxyHeader: false });
  const out = await within(exchange(port, [GET_CLOSE]), 5000, 'plain GET');
  assert.match(out, /\r\n\r\n127\.0\.0\.1 \d+ 0\n$/);
  assert.deepEqual(lines, []);
});

test('the header timeout is a deadline: a byte every 100 ms does not keep the connection', async (t) => {
  const { port, lines } = await start(t, http.createServer(echoAddr), { headerTimeout: 300 });
  const line = 'PROXY TCP4 203.0.113.7 127.0.0.1 40000 3000\r\n';
  const started = Date.now();
  const out = await within(exchange(port, [...line].slice(0, -2), { gapMs: 100, resetOk: true }), 10000, 'dribble');
  assert.equal(out, '');
  assert.ok(Date.now() - started < 100 * (line.length - 2), `closed after ${Date.now() - started} ms`);
  assert.match(lines[0], /PROXY header timeout/);
});

// withoutStickyd is env as if stickyd had not started the process.
function withoutStickyd(env) {
  delete env.STICKYD_WORKER_ID;
  delete env.STICKYD_WORKERS;
  return env;
}

test('a worker of Node\'s cluster under stickyd: listen refuses, naming cluster.fork and the fix', async () => {
  const { spawnSync } = require('node:child_process');
  const r = spawnSync(process.execPath, [path.join(__dirname, '../testdata/clustered.js')],
    { env: { ...process.env, PORT: '0', STICKYD_WORKER_ID: '0', STICKYD_WORKERS: '1' }, encoding: 'utf8', timeout: 10000 });
  assert.match(r.stdout, /fork exited 1/);
  assert.match(r.stderr, /this process is a worker of Node's cluster module \(the app calls cluster\.fork\(\)\), under stickyd/);
  assert.match(r.stderr, /Fix: remove the cluster\.isPrimary \/ cluster\.fork\(\) branch/);
  // Not under stickyd (no STICKYD_WORKER_ID): cluster is the app's business.
  const free = spawnSync(process.execPath, [path.join(__dirname, '../testdata/clustered.js')],
    { env: withoutStickyd({ ...process.env, PORT: '0' }), encoding: 'utf8', timeout: 10000 });
  assert.match(free.stdout, /fork exited 0/, free.stderr);
});

test('a worker whose IPC channel a wrapper took (npm start): one line at load, naming the fix', async () => {
  const { spawnSync, fork } = require('node:child_process');
  const load = `require(${JSON.stringify(path.join(__dirname, '..'))}); console.log(typeof process.send); process.disconnect?.()`;
  const env = { ...process.env, STICKYD_IPC: 'node', STICKYD_WORKER_ID: '0' };
  const lost = spawnSync(process.execPath, ['-e', load], { env, encoding: 'utf8', timeout: 10000 });
  assert.match(lost.stdout, /undefined/);
  assert.match(lost.stderr, /stickyd gave this worker a Node IPC channel .* but this process has none: a wrapper between stickyd and node took it/);
  assert.match(lost.stderr, /Fix: start node directly/);
  // Not under stickyd: silent.
  const free = spawnSync(process.execPath, ['-e', load], { env: withoutStickyd({ ...process.env }), encoding: 'utf8', timeout: 10000 });
  assert.equal(free.stderr, '');
  // With its channel (as stickyd starts it): silent.
  const child = fork('-e', [load], { env, silent: true });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { err += d; });
  await within(new Promise((resolve) => child.on('close', resolve)), 10000, 'the forked child did not exit');
  assert.equal(out.trim(), 'function');
  assert.equal(err, '');
});
