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
const { listen } = require('stickyd-worker');

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

// Listens on PORT (127.0.0.1) or SOCKET, reads the PROXY header, and on
// SIGTERM stops accepting and lets the open connections finish.
const server = listen(httpServer, () => log(`listening on ${JSON.stringify(server.address())}`));
