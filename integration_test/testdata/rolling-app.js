// A worker app for the rolling restart test: it answers every request with
// the version of the app it started with (read from $APP_VERSION_FILE at
// start, as a deployed file would be, then $APP_TAG), its slot, pid and
// the client's IP.
// /slow answers after 1.5 s (/slow?ms=N: after N ms): a request in flight
// while its worker is replaced. /grow?mb=N leaks N MiB. Version "broken" is a deploy that fails at start, "crashy" one
// that listens, then crashes 300 ms later.
const fs = require('fs');
const http = require('http');
const { listen } = require('stickyd-worker');

const deployed = fs.readFileSync(process.env.APP_VERSION_FILE, 'utf8').trim();
const version = deployed + (process.env.APP_TAG || '');
if (deployed === 'broken') {
  console.error('cannot start: this deploy is broken');
  process.exit(1);
}
const worker = process.env.STICKYD_WORKER_ID;
const leaked = [];
const server = http.createServer((req, res) => {
  const reply = () => res.end(`${version} worker ${worker} pid ${process.pid} client ${req.socket.remoteAddress}\n`);
  const grow = /^\/grow\?mb=(\d+)$/.exec(req.url);
  if (grow) { // a leak: held, and touched so that it is resident
    leaked.push(Buffer.alloc(Number(grow[1]) << 20).fill(1));
    return reply();
  }
  const slow = /^\/slow(?:\?ms=(\d+))?$/.exec(req.url);
  if (slow) setTimeout(reply, slow[1] ? Number(slow[1]) : 1500);
  else reply();
});
listen(server, () => {
  if (deployed === 'crashy') setTimeout(() => process.exit(2), 300);
});
