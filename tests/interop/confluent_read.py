#!/usr/bin/env python3
"""Read Keel's records with Confluent's own Python client, as another team would.

Consumes TOPIC from the beginning under read_committed with confluent-kafka's
DeserializingConsumer: keys as UTF-8 strings, values through AvroDeserializer against the
schema registry (Confluent wire format: magic byte, schema id, Avro datum). Prints one JSON
object per record: {"key", "partition", "offset", "headers": {name: value}, "value": {...}}.
Exits non-zero if fewer than --min records arrive within --timeout seconds, or if any value
fails to deserialize.

    confluent_read.py --bootstrap 127.0.0.1:9092 \
        --registry http://127.0.0.1:8080/apis/ccompat/v7 --topic order.status.changed --min 2
"""

import argparse
import json
import sys
import time
import uuid

from confluent_kafka import DeserializingConsumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import StringDeserializer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--min", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()

    registry = SchemaRegistryClient({"url": args.registry})
    consumer = DeserializingConsumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"interop-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "key.deserializer": StringDeserializer("utf_8"),
            "value.deserializer": AvroDeserializer(registry),
        }
    )
    consumer.subscribe([args.topic])
    seen = 0
    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                if seen >= args.min:
                    break
                continue
            if msg.error():
                print(f"consumer error: {msg.error()}", file=sys.stderr)
                continue
            headers = {
                k: (v.decode("utf-8") if v is not None else None)
                for k, v in (msg.headers() or [])
            }
            print(
                json.dumps(
                    {
                        "key": msg.key(),
                        "partition": msg.partition(),
                        "offset": msg.offset(),
                        "headers": headers,
                        "value": msg.value(),
                    },
                    default=str,
                ),
                flush=True,
            )
            seen += 1
    finally:
        consumer.close()
    if seen < args.min:
        print(f"only {seen} of {args.min} records from {args.topic}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
