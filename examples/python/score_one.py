#!/usr/bin/env python3
"""Publish one JSON job to Surge with pika and print its result (any AMQP client works).

    pip install pika
    python3 examples/python/score_one.py            # needs a running `surge worker`

The job goes to the `surge.jobs` exchange with routing key = model name; the result
comes back on a reply queue of our own, matched by correlation id. The job carries a
W3C `traceparent` header, and so does its result: the same trace id, and the span id
of the worker's span for the job when the worker exports traces (else ours, echoed).
"""
import argparse
import json
import os
import sys
import uuid

import pika

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
parser.add_argument("--prefix", default="surge", help="topology prefix (default: surge)")
parser.add_argument("--model", default="breast-cancer")
parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the result")
args = parser.parse_args()

# Two rows of the 30 breast-cancer features (the first two rows of sample.csv).
rows = [
    [20.29, 14.34, 135.1, 1297, 0.1003, 0.1328, 0.198, 0.1043, 0.1809, 0.05883, 0.7572, 0.7813, 5.438,
     94.44, 0.01149, 0.02461, 0.05688, 0.01885, 0.01756, 0.005115, 22.54, 16.67, 152.2, 1575, 0.1374,
     0.205, 0.4, 0.1625, 0.2364, 0.07678],
    [13.71, 20.83, 90.2, 577.9, 0.1189, 0.1645, 0.09366, 0.05985, 0.2196, 0.07451, 0.5835, 1.377, 3.856,
     50.96, 0.008805, 0.03029, 0.02488, 0.01448, 0.01486, 0.005412, 17.06, 28.14, 110.6, 897, 0.1654,
     0.3682, 0.2678, 0.1556, 0.3196, 0.1151],
]

conn = pika.BlockingConnection(pika.URLParameters(args.url))
ch = conn.channel()
ch.confirm_delivery()  # publisher confirms: basic_publish raises if the broker refuses
reply = ch.queue_declare(queue="", exclusive=True).method.queue
job_id = str(uuid.uuid4())
job = {"v": 1, "model": args.model, "inputs": rows}
# W3C Trace Context: version 00, a 16-byte trace id, the 8-byte id of our (publish)
# span, flags 01 (sampled). A tracing library (opentelemetry's propagator) would make
# these from its current span; any well-formed value will do.
trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
traceparent = f"00-{trace_id}-{span_id}-01"
ch.basic_publish(
    exchange=f"{args.prefix}.jobs",
    routing_key=args.model,
    body=json.dumps(job).encode(),
    properties=pika.BasicProperties(
        message_id=job_id,
        correlation_id=job_id,
        reply_to=reply,
        content_type="application/json",
        delivery_mode=2,
        headers={"traceparent": traceparent},
    ),
    mandatory=True,  # unroutable (no such model queue) raises instead of vanishing
)
for method, props, body in ch.consume(reply, inactivity_timeout=args.timeout):
    if method is None:
        sys.exit(f"no result within {args.timeout} s: is `surge worker` running for {args.model}?")
    ch.basic_ack(method.delivery_tag)
    if props.correlation_id == job_id:
        back = (props.headers or {}).get("traceparent", "")
        if isinstance(back, bytes):
            back = back.decode()
        print(f"traceparent sent {traceparent}, back {back}", file=sys.stderr)
        if back.split("-")[1:2] != [trace_id]:
            sys.exit(f"the result's traceparent {back!r} is not in our trace {trace_id}")
        print(json.dumps(json.loads(body)))
        break
conn.close()
