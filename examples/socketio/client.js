'use strict';
// Demo client: connects N socket.io clients and prints which worker each
// one landed on, then pings it.
//
//   node client.js [url] [clients]          # through stickyd (default http://127.0.0.1:3000)
//   PROXY_FROM=203.0.113.7 node client.js http://127.0.0.1:3001
//
// With PROXY_FROM set the client writes the PROXY v1 header itself, as
// stickyd would, so it can talk to one worker directly.
const http = require('node:http');
const net = require('node:net');
const { io } = require('socket.io-client');

const url = process.argv[2] || 'http://127.0.0.1:3000';
const clients = Number(process.argv[3] || 3);
const transports = (process.env.TRANSPORTS || 'polling,websocket').split(',');

// An agent whose every new connection opens with a PROXY v1 header.
class ProxyHeaderAgent extends http.Agent {
  createConnection(opts, cb) {
    const socket = net.connect({ host: opts.host, port: opts.port });
    const from = process.env.PROXY_FROM;
    const tcp = net.isIP(from) === 6 ? 'TCP6' : 'TCP4';
    const to = tcp === 'TCP6' ? '::1' : '127.0.0.1';
    socket.write(`PROXY ${tcp} ${from} ${to} ${40000 + Math.floor(Math.random() * 20000)} ${opts.port}\r\n`);
    if (cb) process.nextTick(cb, null, socket);
    return socket;
  }
}
const agent = process.env.PROXY_FROM ? new ProxyHeaderAgent({ keepAlive: true }) : undefined;

let pending = clients;
for (let i = 0; i < clients; i++) {
  // forceNew: a connection per client. Without it io() hands every client
  // the same Manager, and they all share one engine.io connection.
  const socket = io(url, { forceNew: true, transports, agent, reconnection: false, timeout: 5000 });
  let connectedVia = '';
  socket.io.on('open', () => { connectedVia = socket.io.engine.transport.name; }); // the handshake
  socket.on('welcome', (info) => {
    // socket.io connects over long-polling, then upgrades to a websocket.
    console.log(`client ${i}: welcome ${JSON.stringify(info)} (connected via ${connectedVia})`);
    const upgraded = socket.io.engine.transport.name === 'websocket' || !transports.includes('websocket')
      ? Promise.resolve() : new Promise((resolve) => socket.io.engine.once('upgrade', resolve));
    upgraded.then(() => socket.emit('ping', { client: i }, (reply) => {
      console.log(`client ${i}: pong ${JSON.stringify(reply)} via ${socket.io.engine.transport.name}`);
      socket.close();
      if (--pending === 0) process.exit(0);
    }));
  });
  socket.on('connect_error', (err) => {
    console.error(`client ${i}: ${err.message}`);
    process.exit(1);
  });
}
setTimeout(() => { console.error('timed out'); process.exit(1); }, 10000).unref();
