// The same app under stickyd: two lines changed (marked). stickyd starts
// the workers (--workers 4) and hashes each client IP to one of them.
const cluster = require('cluster');
const http = require('http');
const express = require('express');
const { Server } = require('socket.io');
const sticky = require('stickyd-worker'); // changed

const worker = process.env.STICKYD_WORKER_ID; // changed

sticky({ num: 4 }, () => {
  const app = express();
  app.get('/', (req, res) => res.send(`worker ${worker} (pid ${process.pid}) says hello to ${req.socket.remoteAddress}\n`));
  const server = http.createServer(app);
  const io = new Server(server);
  io.on('connection', (socket) => {
    socket.emit('welcome', { worker, pid: process.pid, clientIp: socket.handshake.address });
    socket.on('ping', (data, ack) => {
      const reply = { worker, pid: process.pid, data };
      socket.emit('pong', reply);
      if (typeof ack === 'function') ack(reply);
    });
  });
  return server;
}).listen(3000, () => {
  console.log(`worker ${worker} listening on port 3000`);
});
