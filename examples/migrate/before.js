// The app as the socketio-sticky-session blog posts wrote it: cluster
// forks one worker per `num`, the master hashes each client IP to a worker.
const cluster = require('cluster');
const http = require('http');
const express = require('express');
const { Server } = require('socket.io');
const sticky = require('socketio-sticky-session');

const worker = String(cluster.worker.id);

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
