#!/usr/bin/env python3
"""Publish the same rows to Surge twice with pika: once packed, once as a list; check
that both results are equal and print them as one JSON line.

    pip install pika msgpack
    python3 examples/python/score_packed.py     # from the repository root, with a `surge worker`

The packed job carries its rows as `rows_f32` (one MessagePack bin of little-endian
float32, row after row) and `cols` (values per row), and names them in `columns`: here
in another order than the model's features (reversed), which the worker undoes by name.
With numpy, `numpy.asarray(rows, "<f4").tobytes()` makes the same bytes as the
`struct.pack` below. The list job sends `inputs`, a list of rows in the model's order.
"""
import argparse
import csv
import json
import os
import struct
import sys
import time
import uuid

import msgpack
import pika

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
parser.add_argument("--prefix", default="surge", help="topology prefix (default: surge)")
parser.add_argument("--model", default="breast-cancer")
parser.add_argument("--sample", default="models/breast-cancer/sample.csv", help="CSV with a header of feature names")
parser.add_argument("--rows", type=int, default=5, help="rows of the sample to send")
parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the results")
args = parser.parse_args()

with open(args.sample, newline="") as f:
    records = list(csv.reader(f))
features, rows = records[0], [[float(x) for x in r] for r in records[1 : 1 + args.rows]]

# The packed job: columns reversed, values reordered to match, packed as float32.
columns = features[::-1]
packed_rows = [r[::-1] for r in rows]
flat = [x for r in packed_rows for x in r]
packed = {
    "v": 1,
    "model": args.model,
    "columns": columns,
    "rows_f32": struct.pack(f"<{len(flat)}f", *flat),  # bytes -> MessagePack bin
    "cols": len(columns),
    "sent_ms": int(time.time() * 1000),
}
# The list job: rows in the model's feature order, no names.
listed = {"v": 1, "model": args.model, "inputs": rows, "sent_ms": int(time.time() * 1000)}

conn = pika.BlockingConnection(pika.URLParameters(args.url))
ch = conn.channel()
ch.confirm_delivery()  # basic_publish raises if the broker nacks or returns a job
reply = ch.queue_declare(queue="", exclusive=True).method.queue
ids = {}
for name, job in (("packed", packed), ("inputs", listed)):
    job_id = f"py-{name}-{uuid.uuid4().hex[:8]}"
    ids[job_id] = name
    ch.basic_publish(
        exchange=f"{args.prefix}.jobs",
        routing_key=args.model,
        body=msgpack.packb(job, use_bin_type=True),
        properties=pika.BasicProperties(
            message_id=job_id,
            correlation_id=job_id,
            reply_to=reply,
            content_type="application/msgpack",
            delivery_mode=2,
        ),
        mandatory=True,  # no queue for the model -> pika.exceptions.UnroutableError
    )

results = {}
for method, props, body in ch.consume(reply, inactivity_timeout=args.timeout):
    if method is None:
        sys.exit(f"no result within {args.timeout} s: is `surge worker` running for {args.model}?")
    ch.basic_ack(method.delivery_tag)
    result = msgpack.unpackb(body)
    name = ids.get(result.get("job_id"))
    if name is not None and name not in results:  # at-least-once: keep the first
        results[name] = result
    if len(results) == len(ids):
        break
ch.cancel()
conn.close()

for name, r in results.items():
    if r["status"] != "ok":
        sys.exit(f"the {name} job failed: {r.get('error')}")
if results["packed"]["outputs"] != results["inputs"]["outputs"]:
    sys.exit(f"packed and list jobs disagree:\n{results['packed']['outputs']}\n{results['inputs']['outputs']}")
print(json.dumps({"equal": True, "output_names": results["packed"]["output_names"],
                  "outputs": results["packed"]["outputs"]}))
