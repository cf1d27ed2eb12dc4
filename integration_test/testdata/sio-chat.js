'use strict';
// Real socket.io clients of examples/socketio, for the workers' bus
// (integration_test/bus_test.go). Usage:
//
//   node sio-chat.js '<json config>'
//
// config: { url, ips: [...], exampleDir, servers, deadlineMs }
//
// Client i connects from ips[i] (socket.io's default transports). Once
// every client is welcomed, the census (fetchSockets and serverCount across
// the workers) is asked until it counts `servers` workers; then client 0
// sends one 'chat', which every client must receive, whichever worker holds
// it. Output: one JSON line, the summary; exit status 0 when every client
// got the chat and the census counted every client.
const http = require('node:http');
const path = require('node:path');
const { createRequire } = require('node:module');

const cfg = JSON.parse(process.argv[2]);
const { io } = createRequire(path.join(cfg.exampleDir, 'package.json'))('socket.io-client');
const started = Date.now();
const summary = { clients: cfg.ips.length, welcomed: 0, perWorker: {}, census: null, censusTries: 0, chats: 0, chatFrom: null, errors: [] };

const timer = setTimeout(() => finish('deadline'), cfg.deadlineMs);
const clients = cfg.ips.map((ip) => {
  const socket = io(cfg.url, {
    forceNew: true,
    agent: new http.Agent({ localAddress: ip }),
    localAddress: ip,
    reconnection: false,
    timeout: 10000,
  });
  const c = { ip, socket, worker: null, chat: null };
  socket.on('welcome', (info) => {
    c.worker = info.worker;
    summary.perWorker[info.worker] = (summary.perWorker[info.worker] || 0) + 1;
    if (++summary.welcomed === cfg.ips.length) census();
  });
  socket.on('chat', (msg) => {
    if (c.chat) return;
    c.chat = msg;
    summary.chats++;
    if (summary.chats === cfg.ips.length) finish('done');
  });
  socket.on('connect_error', (err) => summary.errors.push(`${ip}: ${err.message}`));
  socket.on('disconnect', (reason) => { if (!summary.done) summary.errors.push(`${ip}: disconnect ${reason}`); });
  return c;
});

// census asks client 0's worker to count every worker's clients, until
// every worker has joined the others (their heartbeats), then chats.
function census() {
  summary.censusTries++;
  clients[0].socket.timeout(8000).emit('census', (err, res) => {
    if (err) res = { error: err.message };
    summary.census = res;
    if (!res.error && res.servers === cfg.servers && res.sockets === cfg.ips.length) {
      summary.chatFrom = clients[0].worker;
      clients[0].socket.emit('chat', `hello from ${clients[0].ip}`);
      return;
    }
    setTimeout(census, 200);
  });
}

function finish(how) {
  if (summary.done) return;
  summary.done = how;
  summary.ms = Date.now() - started;
  summary.missed = clients.filter((c) => !c.chat).map((c) => `${c.ip} (worker ${c.worker})`).slice(0, 10);
  summary.chatWorkers = [...new Set(clients.filter((c) => c.chat).map((c) => c.worker))].sort();
  clearTimeout(timer);
  for (const c of clients) c.socket.close();
  process.stdout.write(JSON.stringify(summary) + '\n');
  process.exit(how === 'done' ? 0 : 3);
}
