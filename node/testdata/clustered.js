'use strict';
// An app that still forks its own workers with Node's cluster module, run
// under stickyd (STICKYD_WORKER_ID and PORT set): the fork's listen() must
// refuse, saying why. The primary prints the fork's exit code.
const cluster = require('node:cluster');
const http = require('node:http');
const { listen } = require('..');

if (cluster.isPrimary) {
  const w = cluster.fork();
  w.on('exit', (code) => {
    console.log(`fork exited ${code}`);
    process.exit(0);
  });
} else {
  // Not under stickyd it listens (cluster is then the app's business), and
  // the fork exits 0 at once.
  listen(http.createServer((req, res) => res.end('ok\n')), { shutdown: false }).on('listening', () => process.exit(0));
}
