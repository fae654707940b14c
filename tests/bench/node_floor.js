// The floor of codev's Node shellper: one PTY (node-pty) running a command,
// a Unix socket server that replays recent output to each client and then
// streams it. Nothing else (no framing, no protocol, no logging), so its
// memory is what any Node PTY server costs before doing its job.
//
//   node node_floor.js SOCKET CMD [ARGS...]
//
// Prints {"pid":N} on stdout once the socket accepts connections.
'use strict';
const net = require('net');
const pty = require('node-pty');

const [sock, cmd, ...args] = process.argv.slice(2);
const child = pty.spawn(cmd, args, { cols: 80, rows: 24, cwd: process.cwd(), env: process.env });
const REPLAY_MAX = 64 * 1024;
let replay = [];
let replayBytes = 0;
const clients = new Set();

child.onData((d) => {
  const b = Buffer.from(d, 'utf8');
  replay.push(b);
  replayBytes += b.length;
  while (replayBytes > REPLAY_MAX && replay.length > 1) replayBytes -= replay.shift().length;
  for (const c of clients) c.write(b);
});
child.onExit(() => process.exit(0));

const server = net.createServer((c) => {
  clients.add(c);
  for (const b of replay) c.write(b);
  c.on('data', (d) => child.write(d.toString('utf8')));
  c.on('close', () => clients.delete(c));
  c.on('error', () => clients.delete(c));
});
server.listen(sock, () => {
  process.stdout.write(JSON.stringify({ pid: process.pid }) + '\n');
});
const stop = () => {
  try { child.kill('SIGHUP'); } catch (_) { /* already gone */ }
  server.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGHUP', stop);
