'use strict';
// socket.io 4 demo app to run as stickyd workers:
//
//   stickyd --listen :3000 --workers 4 -- node examples/socketio/server.js
//
// stickyd starts one copy per worker with PORT (or SOCKET) and
// STICKYD_WORKER_ID set, and sends a PROXY header on every connection, so
// the app sees the real client IP. Each client gets a 'welcome' event
// {worker, pid, clientIp} on connect; 'ping' is answered with 'pong'.
const fs = require('node:fs');
const http = require('node:http');
const { Server } = require('socket.io');
const { acceptProxy } = require('./proxy-protocol');

const worker = process.env.STICKYD_WORKER_ID ?? '0';
const log = (...args) => console.log(`[worker ${worker}]`, ...args);

const httpServer = http.createServer((req, res) => {
  res.setHeader('Content-Type', 'text/plain');
  res.end(`worker ${worker} (pid ${process.pid}) says hello to ${req.socket.remoteAddress}\n`);
});
const io = new Server(httpServer);

io.on('connection', (socket) => {
  const clientIp = socket.handshake.address; // from the PROXY header
  log(`connect ${socket.id} from ${clientIp}`);
  socket.emit('welcome', { worker, pid: process.pid, clientIp });
  socket.on('ping', (data, ack) => {
    const reply = { worker, pid: process.pid, data };
    socket.emit('pong', reply);
    if (typeof ack === 'function') ack(reply);
  });
  socket.on('disconnect', (reason) => log(`disconnect ${socket.id}: ${reason}`));
});

// httpServer never listens itself: the front server strips the PROXY header
// and hands each connection over.
const front = acceptProxy(httpServer);
if (process.env.SOCKET) {
  fs.rmSync(process.env.SOCKET, { force: true }); // stale socket of a dead worker
  front.listen(process.env.SOCKET, () => log(`listening on ${process.env.SOCKET}`));
} else {
  const port = Number(process.env.PORT || 3001);
  front.listen(port, '127.0.0.1', () => log(`listening on 127.0.0.1:${port}`));
}

process.on('SIGTERM', () => {
  log('SIGTERM: closing');
  front.close();
  io.close(() => process.exit(0)); // disconnects clients, closes httpServer
  setTimeout(() => process.exit(0), 5000).unref();
});
