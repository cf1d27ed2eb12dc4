'use strict';
// socket.io 4 demo app to run as stickyd workers:
//
//   stickyd --listen :3000 --workers 4 -- node examples/socketio/server.js
//
// stickyd starts one copy per worker with PORT (or SOCKET) and
// STICKYD_WORKER_ID set, and sends a PROXY header on every connection;
// stickyd-worker (../../node) listens there and reads the header, so the
// app sees the real client IP. Each client gets a 'welcome' event
// {worker, pid, clientIp} on connect; 'ping' is answered with 'pong'.
const http = require('node:http');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/cluster-adapter');
const { listen } = require('stickyd-worker');

const worker = process.env.STICKYD_WORKER_ID ?? '0';
const log = (...args) => console.log(`[worker ${worker}]`, ...args);

const httpServer = http.createServer((req, res) => {
  res.setHeader('Content-Type', 'text/plain');
  res.end(`worker ${worker} (pid ${process.pid}) says hello to ${req.socket.remoteAddress}\n`);
});
const io = new Server(httpServer);
// The workers reach each other as under Node's cluster: stickyd gives each
// one an IPC channel (process.send) and relays the cluster adapter's
// messages between them, so io.emit reaches the clients of every worker.
// (Run alone, without stickyd, there is no channel and no other worker.)
if (process.send) io.adapter(createAdapter());

io.on('connection', (socket) => {
  const clientIp = socket.handshake.address; // from the PROXY header
  log(`connect ${socket.id} from ${clientIp}`);
  socket.emit('welcome', { worker, pid: process.pid, clientIp });
  socket.on('ping', (data, ack) => {
    const reply = { worker, pid: process.pid, data };
    socket.emit('pong', reply);
    if (typeof ack === 'function') ack(reply);
  });
  // 'chat' goes to every client, whichever worker holds it.
  socket.on('chat', (text) => io.emit('chat', { worker, text }));
  // 'census' counts the clients of every worker, and the workers.
  socket.on('census', async (ack) => {
    if (typeof ack !== 'function') return;
    try {
      const sockets = await io.fetchSockets();
      ack({ sockets: sockets.length, servers: await io.of('/').adapter.serverCount() });
    } catch (err) {
      ack({ error: err.message });
    }
  });
  socket.on('disconnect', (reason) => log(`disconnect ${socket.id}: ${reason}`));
});

// Listens on PORT (127.0.0.1) or SOCKET, reads the PROXY header, and on
// SIGTERM stops accepting and lets the open connections finish.
const server = listen(httpServer, () => log(`listening on ${JSON.stringify(server.address())}`));
