// A Surge client in Node, written from docs/PROTOCOL.md alone, with amqplib's defaults.
// It publishes one job for each edge of the protocol and checks the answer to each:
//
//   npm ci --prefix tests/clients/node         (or: make node-client)
//   node tests/clients/node/edges.mjs          (from the repository root, with a worker)
//
// Environment: AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f), SURGE_PREFIX
// (default surge), SURGE_MAX_ROWS (the worker's --max-rows-per-job, default 65536).
// Prints one JSON object: each case with what was sent, what came back and what was
// wrong, and the length of the dead-letter queue at the end. Exits 1 if a case failed.
import { readFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import amqp from 'amqplib';
import { decode, encode } from '@msgpack/msgpack';

const url = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f';
const prefix = process.env.SURGE_PREFIX || 'surge';
const maxRows = Number(process.env.SURGE_MAX_ROWS || 65536);
const waitMs = 30_000;
const MODEL = 'breast-cancer';
const JSON_CT = 'application/json';
const MSGPACK_CT = 'application/msgpack';
const DIRECT = 'amq.rabbitmq.reply-to'; // RabbitMQ's direct reply-to pseudo-queue

// Two rows of sample.csv; its header names the 30 features in the model's order.
const [header, ...lines] = readFileSync('models/breast-cancer/sample.csv', 'utf8')
  .trim()
  .split(/\r?\n/);
const features = header.split(',');
const rows = lines.slice(0, 2).map((l) => l.split(',').map(Number));
const job = (extra = {}) => ({ v: 1, model: MODEL, inputs: rows, ...extra });

// The same job with one bad value: row 1, feature 4.
const BAD_AT = `row 1, feature 4 (${features[4]})`;
const withBad = (bad) =>
  job({ inputs: rows.map((r, i) => (i === 1 ? r.map((x, j) => (j === 4 ? bad : x)) : r)) });
// JSON.stringify cannot write NaN or 1e999, so those are spliced into the text.
const jsonWithBad = (token) =>
  Buffer.from(JSON.stringify(withBad('BAD')).replace('"BAD"', token));
const json = (value) => Buffer.from(JSON.stringify(value));
const msgpack = (value) => Buffer.from(encode(value));

// Checks: each returns a list of problems (empty when the result is right).
const ok = (r) => {
  const p = [];
  if (r.status !== 'ok') p.push(`status ${r.status}, want ok (${JSON.stringify(r.error)})`);
  if (!Array.isArray(r.outputs) || r.outputs.length !== rows.length)
    p.push(`want ${rows.length} outputs, got ${JSON.stringify(r.outputs)}`);
  return p;
};
const error = (kind, { model, where } = {}) => (r) => {
  const p = [];
  if (r.status !== 'error') p.push(`status ${r.status}, want error`);
  if (r.error?.kind !== kind) p.push(`error.kind ${r.error?.kind}, want ${kind}`);
  if (where && !String(r.error?.message).includes(where))
    p.push(`error.message ${JSON.stringify(r.error?.message)} does not name ${where}`);
  if (model !== undefined && r.model !== model) p.push(`model ${JSON.stringify(r.model)}, want ${model}`);
  return p;
};
const nonFinite = error('invalid_input', { model: MODEL, where: BAD_AT });
const queueMsWithin = (lo, hi) => (r) => {
  const p = ok(r);
  const q = r.timings?.queue_ms;
  if (typeof q !== 'number' || q < lo || q > hi) p.push(`timings.queue_ms ${q}, want ${lo}..${hi}`);
  return p;
};

// name, body, content type, reply to the direct reply-to pseudo-queue or our own queue,
// extra properties, check.
const cases = [
  ['direct_reply_to_json', json(job()), JSON_CT, DIRECT, {}, ok],
  ['direct_reply_to_msgpack', msgpack(job()), MSGPACK_CT, DIRECT, {}, ok],
  ['json_null', jsonWithBad('null'), JSON_CT, 'own', {}, nonFinite],
  ['json_nan', jsonWithBad('NaN'), JSON_CT, 'own', {}, nonFinite],
  ['json_infinity', jsonWithBad('Infinity'), JSON_CT, 'own', {}, nonFinite],
  ['json_minus_infinity', jsonWithBad('-Infinity'), JSON_CT, 'own', {}, nonFinite],
  ['json_overflow_1e999', jsonWithBad('1e999'), JSON_CT, 'own', {}, nonFinite],
  ['json_beyond_f32_1e39', jsonWithBad('1e39'), JSON_CT, 'own', {}, nonFinite],
  ['msgpack_nil', msgpack(withBad(null)), MSGPACK_CT, 'own', {}, nonFinite],
  ['msgpack_nan', msgpack(withBad(NaN)), MSGPACK_CT, 'own', {}, nonFinite],
  ['msgpack_infinity', msgpack(withBad(Infinity)), MSGPACK_CT, 'own', {}, nonFinite],
  ['msgpack_minus_infinity', msgpack(withBad(-Infinity)), MSGPACK_CT, 'own', {}, nonFinite],
  ['msgpack_beyond_f32_1e39', msgpack(withBad(1e39)), MSGPACK_CT, 'own', {}, nonFinite],
  ['json_array_body', json([1, MODEL, null, rows]), JSON_CT, 'own', {}, error('invalid_job')],
  ['msgpack_array_body', msgpack([1, MODEL, null, rows]), MSGPACK_CT, 'own', {}, error('invalid_job')],
  [
    'too_many_rows',
    json(job({ inputs: Array.from({ length: maxRows + 1 }, () => rows[0]) })),
    JSON_CT,
    'own',
    {},
    error('too_many_rows', { model: MODEL }),
  ],
  ['version_not_a_string', json(job({ version: 7 })), JSON_CT, 'own', {}, error('invalid_job', { model: MODEL })],
  [
    'unsupported_version_v2',
    json({ v: 2, model: MODEL, payload: {} }),
    JSON_CT,
    'own',
    {},
    error('unsupported_version', { model: MODEL }),
  ],
  // No sent_ms: the worker takes the send time from the AMQP timestamp, here in ms.
  ['timestamp_ms', json(job()), JSON_CT, 'own', { timestamp: 'now' }, queueMsWithin(0, 10_000)],
  // A producer clock a minute ahead of the worker's: the wait reads 0.
  ['clock_ahead', json(job({ sent_ms: Date.now() + 60_000 })), JSON_CT, 'own', {}, queueMsWithin(0, 0)],
].map(([name, body, contentType, replyTo, props, check]) => ({
  name,
  body,
  contentType,
  replyTo,
  props,
  check,
  id: `node-${randomUUID().slice(0, 8)}-${name}`,
  result: null,
  problems: [],
}));

const shown = (c) =>
  c.contentType === JSON_CT
    ? c.body.toString().slice(0, 400)
    : `msgpack ${c.body.toString('hex').slice(0, 400)}`;

const conn = await amqp.connect(url);
const ch = await conn.createConfirmChannel();
const returned = new Set();
ch.on('return', (msg) => returned.add(msg.properties.messageId));

let allAnswered;
const answered = new Promise((resolve) => {
  allAnswered = resolve;
});
const byId = new Map(cases.map((c) => [c.id, c]));
const onResult = (msg) => {
  const c = byId.get(msg.properties.correlationId);
  if (!c || c.result) return; // not ours, or a duplicate (at-least-once)
  const ct = msg.properties.contentType;
  c.result = ct === MSGPACK_CT ? decode(msg.content) : JSON.parse(msg.content.toString());
  c.resultContentType = ct;
  if (cases.every((x) => x.result)) allAnswered();
};
// Direct reply-to: consume the pseudo-queue with noAck, then publish on the same channel.
await ch.consume(DIRECT, onResult, { noAck: true });
const own = (await ch.assertQueue('', { exclusive: true })).queue;
await ch.consume(own, (msg) => {
  onResult(msg);
  ch.ack(msg);
});

for (const c of cases) {
  const props = {
    messageId: c.id,
    correlationId: c.id,
    replyTo: c.replyTo === DIRECT ? DIRECT : own,
    contentType: c.contentType,
    deliveryMode: 2,
    mandatory: true,
  };
  if (c.props.timestamp === 'now') props.timestamp = Date.now();
  ch.publish(`${prefix}.jobs`, MODEL, c.body, props);
}
await ch.waitForConfirms();

const timer = setTimeout(allAnswered, waitMs);
await answered;
clearTimeout(timer);

for (const c of cases) {
  if (returned.has(c.id)) c.problems.push('the broker returned the job (no queue for the model?)');
  if (!c.result) c.problems.push(`no result within ${waitMs} ms`);
  else {
    if (c.result.v !== 1) c.problems.push(`result v ${c.result.v}, want 1`);
    if (c.result.job_id !== c.id) c.problems.push(`job_id ${c.result.job_id}, want ${c.id}`);
    if (c.resultContentType !== c.contentType)
      c.problems.push(`result content_type ${c.resultContentType}, want ${c.contentType}`);
    c.problems.push(...c.check(c.result));
  }
}

// Nothing here should have been dead-lettered; give a late dead letter a moment to land.
await new Promise((r) => setTimeout(r, 1_000));
const check = await conn.createChannel();
const deadQueue = `${prefix}.dead`;
const dead = (await check.checkQueue(deadQueue)).messageCount;
await conn.close();

const problems = cases.flatMap((c) => c.problems.map((p) => `${c.name}: ${p}`));
if (dead !== 0) problems.push(`${deadQueue} holds ${dead} messages, want 0`);
const report = {
  client: 'node',
  node: process.version,
  prefix,
  dead_letter_queue: { name: deadQueue, messages: dead },
  cases: Object.fromEntries(
    cases.map((c) => [
      c.name,
      {
        sent: shown(c),
        content_type: c.contentType,
        reply_to: c.replyTo === DIRECT ? DIRECT : 'own exclusive queue',
        result: c.result,
        problems: c.problems,
      },
    ]),
  ),
  problems,
};
console.log(JSON.stringify(report));
process.exit(problems.length ? 1 : 0);
