'use strict';
// A worker app for the tests: answers every request with JSON
// {worker, pid, ip, port, local, size}; GET /slow answers after 700 ms.
const http = require('node:http');
const { listen } = require('..');

const server = http.createServer((req, res) => {
  let size = 0;
  req.on('data', (d) => { size += d.length; });
  req.on('end', () => {
    const reply = () => res.end(JSON.stringify({
      worker: process.env.STICKYD_WORKER_ID ?? '', pid: process.pid, ip: req.socket.remoteAddress,
      port: req.socket.remotePort, local: Boolean(req.socket.proxyHeader && req.socket.proxyHeader.local), size,
    }));
    if (req.url === '/slow') setTimeout(reply, 700);
    else reply();
  });
});
listen(server, () => console.log(`listening on ${JSON.stringify(server.address())}`));
