#!/usr/bin/env python3
"""A Surge client in Python (pika, msgpack), written from docs/PROTOCOL.md alone.

It publishes one job for each edge of the protocol and checks the answer to each:

    pip install pika msgpack                    (or: make pyenv)
    python3 tests/clients/python/edges.py       (from the repository root, with a worker)

Environment: AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f), SURGE_PREFIX
(default surge), SURGE_MAX_ROWS (the worker's --max-rows-per-job, default 65536).
Prints one JSON object: each case with what was sent, what came back and what was
wrong, and the length of the dead-letter queue at the end. Exits 1 if a case failed.
"""
import csv
import json
import os
import sys
import time
import uuid

import msgpack
import pika

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
PREFIX = os.environ.get("SURGE_PREFIX", "surge")
MAX_ROWS = int(os.environ.get("SURGE_MAX_ROWS", "65536"))
WAIT_S = 30.0
MODEL = "breast-cancer"
JSON_CT, MSGPACK_CT = "application/json", "application/msgpack"
DIRECT = "amq.rabbitmq.reply-to"  # RabbitMQ's direct reply-to pseudo-queue

# Two rows of sample.csv; its header names the 30 features in the model's order.
with open("models/breast-cancer/sample.csv") as f:
    table = list(csv.reader(f))
FEATURES = table[0]
ROWS = [[float(x) for x in r] for r in table[1:3]]


def job(**extra):
    return {"v": 1, "model": MODEL, "inputs": ROWS, **extra}


# The same job with one bad value: row 1, feature 4.
BAD_AT = f"row 1, feature 4 ({FEATURES[4]})"


def with_bad(bad):
    rows = [list(r) for r in ROWS]
    rows[1][4] = bad
    return job(inputs=rows)


def json_with_bad(token):
    # json.dumps writes NaN, Infinity and -Infinity itself; 1e999 has to be spliced in.
    return json.dumps(with_bad("BAD")).replace('"BAD"', token).encode()


def as_json(value):
    return json.dumps(value).encode()


def as_msgpack(value):
    return msgpack.packb(value)


# Checks: each returns a list of problems (empty when the result is right).
def ok(r):
    p = []
    if r.get("status") != "ok":
        p.append(f"status {r.get('status')}, want ok ({r.get('error')})")
    if len(r.get("outputs") or []) != len(ROWS):
        p.append(f"want {len(ROWS)} outputs, got {r.get('outputs')}")
    return p


def error(kind, model=None, where=None):
    def check(r):
        p = []
        err = r.get("error") or {}
        if r.get("status") != "error":
            p.append(f"status {r.get('status')}, want error")
        if err.get("kind") != kind:
            p.append(f"error.kind {err.get('kind')}, want {kind}")
        if where and where not in str(err.get("message")):
            p.append(f"error.message {err.get('message')!r} does not name {where}")
        if model is not None and r.get("model") != model:
            p.append(f"model {r.get('model')!r}, want {model}")
        return p

    return check


non_finite = error("invalid_input", model=MODEL, where=BAD_AT)


def queue_ms_within(lo, hi):
    def check(r):
        p = ok(r)
        q = (r.get("timings") or {}).get("queue_ms")
        if not isinstance(q, (int, float)) or not lo <= q <= hi:
            p.append(f"timings.queue_ms {q}, want {lo}..{hi}")
        return p

    return check


# name, body, content type, reply to the direct reply-to pseudo-queue or our own queue,
# extra properties, check.
CASES = [
    ("direct_reply_to_json", as_json(job()), JSON_CT, DIRECT, {}, ok),
    ("direct_reply_to_msgpack", as_msgpack(job()), MSGPACK_CT, DIRECT, {}, ok),
    ("json_null", as_json(with_bad(None)), JSON_CT, "own", {}, non_finite),
    ("json_nan", as_json(with_bad(float("nan"))), JSON_CT, "own", {}, non_finite),
    ("json_infinity", as_json(with_bad(float("inf"))), JSON_CT, "own", {}, non_finite),
    ("json_minus_infinity", as_json(with_bad(float("-inf"))), JSON_CT, "own", {}, non_finite),
    ("json_overflow_1e999", json_with_bad("1e999"), JSON_CT, "own", {}, non_finite),
    ("json_beyond_f32_1e39", as_json(with_bad(1e39)), JSON_CT, "own", {}, non_finite),
    ("msgpack_nil", as_msgpack(with_bad(None)), MSGPACK_CT, "own", {}, non_finite),
    ("msgpack_nan", as_msgpack(with_bad(float("nan"))), MSGPACK_CT, "own", {}, non_finite),
    ("msgpack_infinity", as_msgpack(with_bad(float("inf"))), MSGPACK_CT, "own", {}, non_finite),
    ("msgpack_minus_infinity", as_msgpack(with_bad(float("-inf"))), MSGPACK_CT, "own", {}, non_finite),
    ("msgpack_beyond_f32_1e39", as_msgpack(with_bad(1e39)), MSGPACK_CT, "own", {}, non_finite),
    ("json_array_body", as_json([1, MODEL, None, ROWS]), JSON_CT, "own", {}, error("invalid_job")),
    ("msgpack_array_body", as_msgpack([1, MODEL, None, ROWS]), MSGPACK_CT, "own", {}, error("invalid_job")),
    (
        "too_many_rows",
        as_json(job(inputs=[ROWS[0]] * (MAX_ROWS + 1))),
        JSON_CT,
        "own",
        {},
        error("too_many_rows", model=MODEL),
    ),
    ("version_not_a_string", as_json(job(version=7)), JSON_CT, "own", {}, error("invalid_job", model=MODEL)),
    (
        "unsupported_version_v2",
        as_json({"v": 2, "model": MODEL, "payload": {}}),
        JSON_CT,
        "own",
        {},
        error("unsupported_version", model=MODEL),
    ),
    # No sent_ms: the worker takes the send time from the AMQP timestamp, here in ms.
    ("timestamp_ms", as_json(job()), JSON_CT, "own", {"timestamp": "now"}, queue_ms_within(0, 10_000)),
    # A producer clock a minute ahead of the worker's: the wait reads 0.
    (
        "clock_ahead",
        as_json(job(sent_ms=int(time.time() * 1000) + 60_000)),
        JSON_CT,
        "own",
        {},
        queue_ms_within(0, 0),
    ),
]


class Case:
    def __init__(self, name, body, content_type, reply_to, props, check):
        self.name, self.body, self.content_type = name, body, content_type
        self.reply_to, self.props, self.check = reply_to, props, check
        self.id = f"py-{uuid.uuid4().hex[:8]}-{name}"
        self.result, self.result_content_type, self.problems = None, None, []

    def shown(self):
        if self.content_type == JSON_CT:
            return self.body.decode()[:400]
        return "msgpack " + self.body.hex()[:400]


cases = [Case(*c) for c in CASES]
by_id = {c.id: c for c in cases}

conn = pika.BlockingConnection(pika.URLParameters(URL))
ch = conn.channel()
ch.confirm_delivery()  # basic_publish raises if the broker nacks or returns the job


def on_result(channel, method, props, body):
    c = by_id.get(props.correlation_id)
    if c is not None and c.result is None:  # not ours, or a duplicate (at-least-once)
        ct = props.content_type
        c.result = msgpack.unpackb(body) if ct == MSGPACK_CT else json.loads(body)
        c.result_content_type = ct


# Direct reply-to: consume the pseudo-queue with auto_ack, then publish on the same channel.
ch.basic_consume(DIRECT, on_result, auto_ack=True)
own = ch.queue_declare(queue="", exclusive=True).method.queue


def on_own(channel, method, props, body):
    on_result(channel, method, props, body)
    channel.basic_ack(method.delivery_tag)


ch.basic_consume(own, on_own)

for c in cases:
    props = dict(
        message_id=c.id,
        correlation_id=c.id,
        reply_to=DIRECT if c.reply_to == DIRECT else own,
        content_type=c.content_type,
        delivery_mode=2,
    )
    if c.props.get("timestamp") == "now":
        props["timestamp"] = int(time.time() * 1000)
    try:
        ch.basic_publish(f"{PREFIX}.jobs", MODEL, c.body, pika.BasicProperties(**props), mandatory=True)
    except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as e:
        c.problems.append(f"the broker refused the job: {e!r}")

deadline = time.monotonic() + WAIT_S
while time.monotonic() < deadline and any(c.result is None for c in cases):
    conn.process_data_events(time_limit=0.1)

for c in cases:
    if c.result is None:
        c.problems.append(f"no result within {WAIT_S} s")
        continue
    r = c.result
    if r.get("v") != 1:
        c.problems.append(f"result v {r.get('v')}, want 1")
    if r.get("job_id") != c.id:
        c.problems.append(f"job_id {r.get('job_id')}, want {c.id}")
    if c.result_content_type != c.content_type:
        c.problems.append(f"result content_type {c.result_content_type}, want {c.content_type}")
    c.problems += c.check(r)

# Nothing here should have been dead-lettered; give a late dead letter a moment to land.
conn.sleep(1.0)
dead_queue = f"{PREFIX}.dead"
dead = conn.channel().queue_declare(queue=dead_queue, passive=True).method.message_count
conn.close()

problems = [f"{c.name}: {p}" for c in cases for p in c.problems]
if dead != 0:
    problems.append(f"{dead_queue} holds {dead} messages, want 0")
report = {
    "client": "python",
    "python": sys.version.split()[0],
    "pika": pika.__version__,
    "prefix": PREFIX,
    "dead_letter_queue": {"name": dead_queue, "messages": dead},
    "cases": {
        c.name: {
            "sent": c.shown(),
            "content_type": c.content_type,
            "reply_to": DIRECT if c.reply_to == DIRECT else "own exclusive queue",
            "result": c.result,
            "problems": c.problems,
        }
        for c in cases
    },
    "problems": problems,
}
print(json.dumps(report))
sys.exit(1 if problems else 0)
