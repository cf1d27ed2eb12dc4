'use strict';
// The package behind real PROXY senders: the stickyd binary (launching the
// workers, v1 and v2) and HAProxy (send-proxy, send-proxy-v2, health checks
// with check-send-proxy); and SIGTERM on a real worker process.
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { test } = require('node:test');
const { listen } = require('..');
const { within } = require('../testdata/helpers');

const stickyd = path.join(__dirname, '..', '..', 'stickyd');
const app = path.join(__dirname, '..', 'testdata', 'app.js');
const haproxy = spawnSync('haproxy', ['-v']).status === 0;

// request sends one request from the local address src and resolves with
// the parsed JSON answer.
function request(port, src, { method = 'GET', path: p = '/', body } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: p, localAddress: src, agent: false }, (res) => {
      let s = '';
      res.on('data', (d) => { s += d; }).on('end', () => {
        try { resolve(JSON.parse(s)); } catch { reject(new Error(`status ${res.statusCode}: ${s}`)); }
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

// retry calls fn until it resolves (a worker may still be starting).
async function retry(fn, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    try { return await fn(); } catch (err) {
      if (Date.now() > deadline) throw new Error(`${what}: ${err.message}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

async function freePort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

// freeRange returns a base such that base..base+n-1 are free on 127.0.0.1.
async function freeRange(n) {
  for (;;) {
    const base = 20000 + Math.floor(Math.random() * 9000);
    const servers = [];
    try {
      for (let i = 0; i < n; i++) {
        const s = net.createServer();
        await new Promise((resolve, reject) => s.once('error', reject).listen(base + i, '127.0.0.1', resolve));
        servers.push(s);
      }
      return base;
    } catch { /* taken: try another */ } finally {
      await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
    }
  }
}

// run starts a process, collects its output, and kills it after the test.
function run(t, cmd, args, opts = {}) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  child.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  child.output = () => out;
  t.after(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  return child;
}

for (const version of ['v1', 'v2']) {
  test(`stickyd --send-proxy ${version} --workers 2: each client's own IP, a 200 KB body, no header errors`, { skip: !fs.existsSync(stickyd) && 'no ./stickyd: go build -o stickyd . (./test.sh does)' }, async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-stickyd-'));
    const cfg = path.join(dir, 'stickyd.toml');
    fs.writeFileSync(cfg, `[workers]\ncommand = ["node", ${JSON.stringify(app)}]\ncount = 2\nport_base = ${await freeRange(2)}\nstop_timeout = "5s"\n`);
    const port = await freePort();
    const p = run(t, stickyd, ['--config', cfg, '--listen', `127.0.0.1:${port}`, '--send-proxy', version, '--log-format', 'json'], { cwd: dir });
    await retry(async () => {
      if ((p.output().match(/"msg":"worker ready"/g) || []).length < 2) throw new Error(p.output());
    }, 20000, 'both workers ready');
    const seen = new Set();
    for (let i = 1; i <= 20; i++) {
      const ip = `127.77.${i}.${i + 1}`;
      const got = await retry(() => request(port, ip), 20000, `GET from ${ip}`);
      assert.equal(got.ip, ip, `worker ${got.worker} was told ${got.ip}`);
      seen.add(got.worker);
    }
    const body = 'b'.repeat(200 * 1024);
    const got = await within(request(port, '127.77.99.1', { method: 'POST', body }), 10000, 'POST');
    assert.deepEqual([got.ip, got.size], ['127.77.99.1', body.length]);
    assert.equal(seen.size, 2, `clients reached workers ${[...seen]}`);
    p.kill('SIGTERM');
    assert.deepEqual(await within(p.exited, 20000, 'stickyd exit'), { code: 0, signal: null });
    assert.doesNotMatch(p.output(), /closed a connection/, p.output()); // readiness probes are not header errors
  });
}

// startHAProxy runs HAProxy in tcp mode on port, in front of target, with
// the given server options.
async function startHAProxy(t, port, target, serverOpts) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-haproxy-'));
  const cfg = path.join(dir, 'haproxy.cfg');
  fs.writeFileSync(cfg, [
    'global', '  maxconn 200', 'defaults', '  mode tcp', '  timeout connect 5s', '  timeout client 30s', '  timeout server 30s',
    `frontend f`, `  bind 127.0.0.1:${port}`, '  default_backend b',
    'backend b', `  server w ${target} ${serverOpts}`, '',
  ].join('\n'));
  const h = run(t, 'haproxy', ['-db', '-f', cfg]);
  await retry(() => new Promise((resolve, reject) => {
    const c = net.connect(port, '127.0.0.1', () => { c.destroy(); resolve(); }).on('error', reject);
  }), 10000, 'haproxy listening');
  return h;
}

for (const [name, opts] of [['send-proxy', 'send-proxy check check-send-proxy inter 100'], ['send-proxy-v2', 'send-proxy-v2 check check-send-proxy inter 100']]) {
  test(`HAProxy ${name} (and its health checks) in front of the worker`, { skip: !haproxy && 'haproxy is not installed (./test.sh installs it)' }, async (t) => {
    const lines = [];
    const checks = []; // headers of the connections that are not the test's clients
    const server = http.createServer((req, res) => res.end(JSON.stringify({ ip: req.socket.remoteAddress })));
    server.on('connection', (s) => { if (!/^127\.88\./.test(s.proxyHeader.address)) checks.push(s.proxyHeader); });
    listen(server, { env: { PORT: '0' }, shutdown: false, log: (l) => lines.push(l) });
    await new Promise((r) => server.once('listening', r));
    t.after(() => { server.closeAllConnections(); server.close(); });
    const port = await freePort();
    await startHAProxy(t, port, `127.0.0.1:${server.address().port}`, opts);
    for (let i = 1; i <= 10; i++) {
      const ip = `127.88.${i}.9`;
      const got = await retry(() => request(port, ip), 10000, `GET from ${ip}`);
      assert.equal(got.ip, ip);
    }
    // v2 checks are LOCAL; v1 checks name HAProxy's own connection.
    const isCheck = (h) => (name === 'send-proxy-v2' ? h.local : h.address === '127.0.0.1');
    await retry(async () => {
      if (checks.filter(isCheck).length < 2) throw new Error(`headers seen ${JSON.stringify(checks)}`);
    }, 10000, 'health checks');
    assert.deepEqual(lines, []);
  });
}

test('SIGTERM: stops accepting, finishes the request in flight, exits 0', async (t) => {
  const port = await freePort();
  const w = run(t, process.execPath, [app], { env: { ...process.env, PORT: String(port) } });
  await retry(() => new Promise((resolve, reject) => {
    const c = net.connect(port, '127.0.0.1', () => { c.destroy(); resolve(); }).on('error', reject);
  }), 10000, 'worker listening');
  const slow = new Promise((resolve, reject) => {
    const c = net.connect(port, '127.0.0.1');
    let s = '';
    c.on('data', (d) => { s += d; }).on('close', () => resolve(s)).on('error', reject);
    c.write('PROXY TCP4 192.0.2.8 127.0.0.1 1111 3000\r\nGET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  });
  await new Promise((r) => setTimeout(r, 200)); // the request is in the worker
  w.kill('SIGTERM');
  await retry(() => new Promise((resolve, reject) => {
    const c = net.connect(port, '127.0.0.1', () => { c.destroy(); reject(new Error('still accepting')); });
    c.on('error', (err) => (err.code === 'ECONNREFUSED' ? resolve() : reject(err)));
  }), 5000, 'refused after SIGTERM');
  assert.match(await within(slow, 10000, 'slow answer'), /"ip":"192\.0\.2\.8"/);
  assert.deepEqual(await within(w.exited, 10000, 'worker exit'), { code: 0, signal: null });
  assert.match(w.output(), /SIGTERM: not accepting/);
});
