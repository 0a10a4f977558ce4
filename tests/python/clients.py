"""kafka-python (an independent client implementation) against a runnel broker.

Usage: clients.py BOOTSTRAP. Exits non-zero with a message on the first failed check.
"""
import sys

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

bootstrap = sys.argv[1]


def check(cond, msg):
    if not cond:
        print("FAIL:", msg, file=sys.stderr)
        sys.exit(1)


admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
admin.create_topics([NewTopic("py-topic", 3, 1)])
try:
    admin.create_topics([NewTopic("py-topic", 3, 1)])
    check(False, "creating an existing topic must fail")
except TopicAlreadyExistsError:
    pass
check("py-topic" in admin.list_topics(), "created topic is listed")

# The default kafka-python producer is idempotent (InitProducerId + sequences).
producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
futures = [producer.send("py-topic", key=b"k%d" % (i % 7), value=b"v%d" % i) for i in range(3000)]
producer.flush()
metas = [f.get(timeout=30) for f in futures]
first_offsets = {}
for m in metas:
    first_offsets.setdefault(m.partition, m.offset)
check(all(o == 0 for o in first_offsets.values()), "first offset of each partition is 0: %r" % first_offsets)

consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                         consumer_timeout_ms=5000, enable_auto_commit=False)
parts = [TopicPartition("py-topic", p) for p in range(3)]
consumer.assign(parts)
consumer.seek_to_beginning(*parts)
seen = {}
count = 0
for msg in consumer:
    count += 1
    seq = int(msg.value[1:])
    check(msg.key == b"k%d" % (seq % 7), "key matches value")
    last = seen.get(msg.key)
    check(last is None or last < seq, "per-key order")
    seen[msg.key] = seq
    if count == 3000:
        break
check(count == 3000, "consumed %d of 3000" % count)
ends = consumer.end_offsets(parts)
check(sum(ends.values()) == 3000, "end offsets sum to 3000: %r" % ends)
begins = consumer.beginning_offsets(parts)
check(all(v == 0 for v in begins.values()), "beginning offsets are 0: %r" % begins)
print("kafka-python: ok (3000 messages, idempotent producer, admin)")
