// Order clients in a real browser page: node ws_orders.mjs URL NAMES [RATE]
//
// NAMES is a comma-separated list: one client each, in the same page. `{name}` in URL is
// replaced by the client's name (e.g. a sticky query parameter). Each client opens a WebSocket to URL with the subprotocol `orders.v1` (Chromium offers
// permessage-deflate on every WebSocket, as every browser does), places orders
// `{"id": "NAME-<n>"}` at RATE per second, and whenever the socket closes reconnects and first
// resends every order not acked yet, in order. Events go to stdout, one line each, in the same
// form as tests/apps/ws_orders_client.py:
//
//   open <extensions or -> | <subprotocol>
//   ack <id> <version>     dup <id>     close <code>     done <json>
//
// `stop` on stdin (or its end) ends new orders; the page then resends until every order is
// acked (at most 30 s) and the script prints `done {"sent": n, "unacked": [...]}`.
import { launch } from './harness.mjs';
import { createInterface } from 'node:readline';

const [url, names, rate = '20'] = process.argv.slice(2);
if (!url || !names) {
  console.error('usage: node ws_orders.mjs URL NAMES [RATE]');
  process.exit(64);
}

const b = await launch();
try {
  const page = await b.page();
  await page.exposeFunction('report', (line) => console.log(line));
  await page.evaluate(
    ({ url: template, names, rate }) => {
      const client = (name) => {
        const url = template.replaceAll('{name}', name);
        const unacked = new Map(); // id -> message, in sequence order
        const acked = new Set();
        let sent = 0;
        let stopping = false;
        let finished;
        const done = new Promise((resolve) => (finished = resolve));
        let deadline = null;
        const connect = () => {
          const ws = new WebSocket(url, ['orders.v1']);
          let timer = null;
          ws.onopen = () => {
            window.report(`open ${ws.extensions || '-'} | ${ws.protocol}`);
            for (const m of unacked.values()) ws.send(m);
            timer = setInterval(() => {
              if (stopping) {
                if (unacked.size === 0) ws.close(1000);
                return;
              }
              sent += 1;
              const id = `${name}-${sent}`;
              const m = JSON.stringify({ id });
              unacked.set(id, m);
              ws.send(m);
            }, 1000 / rate);
          };
          ws.onmessage = (ev) => {
            const reply = JSON.parse(ev.data);
            if (!reply.version) return;
            if (acked.has(reply.id)) {
              window.report(`dup ${reply.id}`);
            } else {
              acked.add(reply.id);
              unacked.delete(reply.id);
              window.report(`ack ${reply.id} ${reply.version}`);
            }
          };
          ws.onclose = (ev) => {
            clearInterval(timer);
            window.report(`close ${ev.code}`);
            if (stopping) {
              deadline = deadline ?? Date.now() + 30_000;
              if (unacked.size === 0 || Date.now() > deadline) {
                finished({ sent, unacked: [...unacked.keys()] });
                return;
              }
            }
            setTimeout(connect, 50);
          };
        };
        connect();
        return {
          stop() {
            stopping = true;
            return done;
          },
        };
      };
      const clients = names.map(client);
      window.stopOrders = async () => {
        const results = await Promise.all(clients.map((c) => c.stop()));
        return {
          sent: results.reduce((n, r) => n + r.sent, 0),
          unacked: results.flatMap((r) => r.unacked),
        };
      };
    },
    { url, names: names.split(','), rate: Number(rate) },
  );
  const lines = createInterface({ input: process.stdin });
  await new Promise((resolve) => {
    lines.on('line', (l) => l.trim() === 'stop' && resolve());
    lines.on('close', resolve);
  });
  const result = await page.evaluate(() => window.stopOrders());
  console.log(`done ${JSON.stringify(result)}`);
} finally {
  await b.close();
}
