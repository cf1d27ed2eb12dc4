'use strict';
// Many real socket.io clients in one Node process, for
// integration_test/socketio_test.go. Usage:
//
//   node sio-clients.js '<json config>'
//
// config: { url, ips: [...], exampleDir, mode: "sticky" | "nonsticky",
//           deadlineMs, pingEveryMs }
//
// Client i binds every connection it opens to ips[i]: the long-polling
// requests through an http.Agent with localAddress, the websocket through
// the localAddress option (engine.io-client passes `agent` to its XHR
// requests but `localAddress` only to ws). Transports are socket.io's
// defaults: long-polling first, then the websocket upgrade. Each client
// pings its server every pingEveryMs once welcomed; every ack and every
// 'pong' must come from the worker (id and pid) that sent 'welcome'.
//
// Output: JSON lines on stdout.
//   sticky mode:    {"event":"ready",...} once every client is connected,
//                   upgraded and acked over the websocket; then the test
//                   writes "killed <worker> <pid>" on stdin (one worker
//                   killed), or "rolled all <pid>,<pid>,..." (every worker
//                   replaced by a rolling restart: those were the old
//                   pids); once every client has recovered:
//                   {"event":"summary",...}.
//   nonsticky mode: no reconnection; {"event":"summary",...} once every
//                   client has succeeded or failed.
// The process exits by itself: at the latest after deadlineMs, with a
// summary that has timedOut=true (exit status 3).
const http = require('node:http');
const path = require('node:path');
const readline = require('node:readline');
const { createRequire } = require('node:module');

const cfg = JSON.parse(process.argv[2]);
const { io } = createRequire(path.join(cfg.exampleDir, 'package.json'))('socket.io-client');
const sticky = cfg.mode === 'sticky';
const settleMs = 10000; // nonsticky: a client that has neither succeeded nor failed by then failed
const started = Date.now();
let phase = 'connect'; // sticky: connect -> wait -> recover -> done; nonsticky: connect -> done
let killed = null; // { worker, pid, at } once the test has killed a worker (at: ms since start)

const clients = cfg.ips.map((ip) => newClient(ip));

function newClient(ip) {
  const c = { ip, connects: 0, disconnects: [], errors: [], sessions: [], outcome: '' };
  const socket = io(cfg.url, {
    forceNew: true, // one engine.io connection per client, not one shared Manager
    agent: new http.Agent({ localAddress: ip }),
    localAddress: ip,
    reconnection: sticky,
    reconnectionDelay: 1500,
    reconnectionDelayMax: 5000,
    randomizationFactor: 0.3,
    timeout: 10000,
  });
  Object.defineProperty(c, 'socket', { value: socket, enumerable: false });
  socket.on('connect', () => { c.connects++; });
  socket.on('welcome', (info) => {
    c.session = {
      worker: info.worker, pid: info.pid, clientIp: info.clientIp, at: Date.now() - started,
      upgraded: false, pingsOk: 0, pingsWs: 0, pongs: 0, mismatches: 0, pingErrors: 0,
    };
    Object.defineProperty(c.session, 'inflight', { value: false, writable: true, enumerable: false });
    c.sessions.push(c.session);
  });
  socket.on('pong', (reply) => {
    const s = c.session;
    if (!s) return;
    if (reply.worker === s.worker && reply.pid === s.pid) s.pongs++;
    else s.mismatches++;
  });
  socket.on('disconnect', (reason, details) => {
    c.session = null;
    if (phase === 'done') return;
    c.disconnects.push({ reason, at: Date.now() - started, detail: describe(details) });
    if (!sticky) settle(c, `disconnect: ${reason}`);
  });
  socket.on('connect_error', (err) => {
    if (c.errors.length < 5) c.errors.push(`${err.message} ${describe(err)}`.trim());
    if (!sticky) settle(c, 'connect_error');
  });
  return c;
}

// describe extracts what a transport error carries: the HTTP status and the
// server's answer ({"code":1,"message":"Session ID unknown"}).
function describe(e) {
  if (!e) return '';
  const body = e.context && typeof e.context.responseText === 'string' ? e.context.responseText : '';
  const status = typeof e.description === 'number' ? e.description : '';
  return `${status} ${body}`.trim();
}

function succeeded(s) {
  return Boolean(s && s.upgraded && s.pingsWs > 0 && s.mismatches === 0);
}

function settle(c, outcome) {
  if (c.outcome) return;
  c.outcome = outcome;
  c.socket.close();
}

function ping(c) {
  const s = c.session;
  if (!s || s.inflight || !c.socket.connected) return;
  const transport = c.socket.io.engine.transport;
  const ws = transport.name === 'websocket';
  if (ws && !s.upgraded) {
    s.upgraded = true;
    s.wsLocalAddress = transport.ws && transport.ws._socket ? transport.ws._socket.localAddress : '';
  }
  s.inflight = true;
  c.socket.timeout(10000).emit('ping', { ip: c.ip }, (err, reply) => {
    s.inflight = false;
    if (err) s.pingErrors++;
    else if (reply.worker !== s.worker || reply.pid !== s.pid) s.mismatches++;
    else {
      s.pingsOk++;
      if (ws) s.pingsWs++;
    }
  });
}

function tick() {
  for (const c of clients) ping(c);
  if (sticky) stickyStep();
  else {
    for (const c of clients) {
      if (succeeded(c.session)) settle(c, 'ok');
      else if (Date.now() - started > settleMs) settle(c, 'timeout');
    }
    if (clients.every((c) => c.outcome)) finish(0);
  }
}

function stickyStep() {
  if (phase === 'connect' && clients.every((c) => succeeded(c.session))) {
    phase = 'wait';
    for (const c of clients) c.pingsAtReady = c.session.pingsOk;
    emit({ event: 'ready', ms: Date.now() - started, startedAt: started, clients: clients.map((c) => ({ ip: c.ip, session: c.session })) });
  }
  if (phase === 'recover' && Date.now() - started - killed.at > 3000 && clients.every(recovered)) finish(0);
}

// recovered: connected and working on a worker that is not the killed
// process, and (for clients that were not on it) still pinging after the kill.
function recovered(c) {
  const s = c.session;
  if (killed.rolled) { // on a new process of its first worker's slot
    return succeeded(s) && !killed.rolled.includes(s.pid) && s.worker === c.sessions[0].worker;
  }
  if (!succeeded(s) || s.pid === killed.pid) return false;
  return c.sessions.length > 1 || s.pingsOk >= c.pingsAtKill + 2;
}

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

function finish(code, timedOut = false) {
  if (phase === 'done') return;
  phase = 'done';
  for (const c of clients) delete c.session;
  const summary = { event: 'summary', ms: Date.now() - started, startedAt: started, timedOut, killed, clients };
  const line = `${JSON.stringify(summary)}\n`; // before closing: that fails the pings in flight
  for (const c of clients) c.socket.close();
  process.stdout.write(line, () => process.exit(code));
}

if (sticky) {
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    const [cmd, worker, pid] = line.trim().split(' ');
    if ((cmd !== 'killed' && cmd !== 'rolled') || phase !== 'wait') return;
    killed = { worker, pid: Number(pid), at: Date.now() - started };
    if (cmd === 'rolled') killed = { worker, rolled: pid.split(',').map(Number), at: killed.at };
    for (const c of clients) c.pingsAtKill = c.session ? c.session.pingsOk : 0;
    phase = 'recover';
  });
  rl.on('close', () => finish(4)); // the test went away
}
setInterval(tick, cfg.pingEveryMs);
setTimeout(() => finish(3, true), cfg.deadlineMs);
