// A plain single-process WebSocket relay on the `ws` package, speaking the
// same minimal protocol as the socket node: connect to /ws?client_id=<id>,
// get a welcome frame, send {"to","body"[,"ref"]}, get an ack; the
// recipient, if connected here, gets {"type":"message",...}. No presence
// store, no broker, no offline buffer: the least a relay must do.
//
// Usage: node relay.js <host> <port>   (loopback only)
'use strict';

const { WebSocketServer } = require('ws');

const host = process.argv[2] || '127.0.0.1';
const port = Number(process.argv[3] || 0);
if (!host.startsWith('127.')) {
  console.error('relay.js: only loopback addresses are allowed');
  process.exit(2);
}

const ID = /^[A-Za-z0-9._~@-]{1,128}$/;
const clients = new Map();
let seq = 0;

const wss = new WebSocketServer({
  host,
  port,
  path: '/ws',
  backlog: 4096,
  perMessageDeflate: false,
  maxPayload: 256 * 1024,
  clientTracking: false,
});

function error(ws, code, message) {
  ws.send(JSON.stringify({ type: 'error', code, message }));
}

wss.on('connection', (ws, req) => {
  const query = req.url.indexOf('?');
  const id = new URLSearchParams(query < 0 ? '' : req.url.slice(query + 1)).get('client_id');
  if (!id || !ID.test(id)) {
    error(ws, 'bad_client_id', 'missing or malformed client_id');
    ws.close(1008);
    return;
  }
  const previous = clients.get(id);
  if (previous) previous.close(4000);
  clients.set(id, ws);
  ws.send(JSON.stringify({ type: 'welcome', client_id: id, node: 'peer' }));

  ws.on('message', (data, isBinary) => {
    if (isBinary) {
      ws.close(1003);
      return;
    }
    let m;
    try {
      m = JSON.parse(data);
    } catch (e) {
      error(ws, 'malformed', 'not JSON');
      return;
    }
    if (m === null || typeof m !== 'object' || typeof m.to !== 'string' || !('body' in m)) {
      error(ws, 'missing_field', 'to and body are required');
      return;
    }
    const mid = `peer/${++seq}`;
    const recipient = clients.get(m.to);
    let status = 'dropped';
    if (recipient) {
      recipient.send(JSON.stringify({
        type: 'message', id: mid, from: id, to: m.to, sent_ms: Date.now(), body: m.body,
      }));
      status = 'delivered';
    }
    const ack = { type: 'ack', id: mid, status };
    if (typeof m.ref === 'string') ack.ref = m.ref;
    ws.send(JSON.stringify(ack));
  });

  ws.on('close', () => {
    if (clients.get(id) === ws) clients.delete(id);
  });
  ws.on('error', () => {});
});

wss.on('listening', () => {
  const a = wss.address();
  process.stdout.write(`listening ${a.address}:${a.port}\n`);
});
wss.on('error', (e) => {
  console.error(`relay.js: ${e.message}`);
  process.exit(1);
});
