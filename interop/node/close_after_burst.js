// Publish with sendToQueue until amqplib's buffer is full, then conn.close(cb), with the
// callback API. amqplib muxes each channel's buffer onto the socket, so connection.close
// (channel 0) can leave before publishes of channel 1 that were queued earlier: the broker
// gets frames after close. Prints one JSON line; exit 0 when the close callback ran.
// Usage: node close_after_burst.js AMQP_URL [QUEUE]
'use strict';
const amqp = require('amqplib/callback_api');

const url = process.argv[2];
const queue = process.argv[3] || `interop.node.burst.${process.pid}`;
const report = (result) => {
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(result.ok ? 0 : 1);
};
setTimeout(() => report({ ok: false, error: 'timed out after 20 s' }), 20000);

amqp.connect(url, (err, conn) => {
  if (err) return report({ ok: false, stage: 'connect', error: String(err) });
  const errors = [];
  conn.on('error', (e) => errors.push(String(e)));
  // 'close' comes after the close callback when the close completed; before it (or
  // without it) when the socket failed first.
  conn.on('close', () => setImmediate(() => report({ ok: false, stage: 'close', errors,
    error: 'connection closed without the close callback' })));
  conn.createChannel((err2, ch) => {
    if (err2) return report({ ok: false, stage: 'channel', error: String(err2) });
    ch.assertQueue(queue, { autoDelete: false }, (err3) => {
      if (err3) return report({ ok: false, stage: 'declare', error: String(err3) });
      const body = Buffer.alloc(1024, 'x');
      let published = 1;
      while (ch.sendToQueue(queue, body)) published++;
      conn.close((err4) => {
        report({ ok: !err4 && errors.length === 0, published, queue, errors,
          error: err4 ? String(err4) : undefined });
      });
    });
  });
});
