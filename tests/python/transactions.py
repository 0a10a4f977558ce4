"""kafka-python's transactional producer and read_committed consumer (an independent
implementation of KIP-98: its own InitProducerId/AddPartitionsToTxn/EndTxn client and its own
filtering of aborted transactions from the fetch response) against a runnel broker.

Usage: transactions.py BOOTSTRAP. Exits non-zero with a message on the first failed check.
"""
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import NewTopic

bootstrap = sys.argv[1]
TOPIC = "py-txn"


STARTED = time.time()


def check(cond, msg):
    print("%6.2fs %s" % (time.time() - STARTED, msg[:60]))
    if not cond:
        print("FAIL:", msg, file=sys.stderr)
        sys.exit(1)


def read(topic, partitions, isolation, expected):
    """Every value of `topic` from the beginning at `isolation`, by partition: reads until it
    has `expected` records and the consumer is idle for 1.5 s (so extra records show up)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, isolation_level=isolation,
                             enable_auto_commit=False, auto_offset_reset="earliest")
    parts = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out = {p: [] for p in range(partitions)}
    count, idle_since, deadline = 0, time.time(), time.time() + 20
    while time.time() < deadline:
        batch = consumer.poll(timeout_ms=100)
        for tp, records in batch.items():
            for r in records:
                out[tp.partition].append(r.value.decode())
                count += 1
        if batch:
            idle_since = time.time()
        elif count >= expected and time.time() - idle_since > 1.5:
            break
    ends = consumer.end_offsets(parts)
    consumer.close()
    return out, {tp.partition: o for tp, o in ends.items()}


admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
admin.create_topics([NewTopic(TOPIC, 2, 1), NewTopic("py-txn-in", 1, 1)])

producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id="py-txn-1", linger_ms=5)
producer.init_transactions()

committed = {0: [], 1: []}
everything = {0: [], 1: []}


def transaction(name, outcome):
    producer.begin_transaction()
    for i in range(10):
        value = "%s-%d" % (name, i)
        producer.send(TOPIC, value=value.encode(), partition=i % 2)
        everything[i % 2].append(value)
        if outcome == "commit":
            committed[i % 2].append(value)
    producer.flush()
    if outcome == "commit":
        producer.commit_transaction()
    elif outcome == "abort":
        producer.abort_transaction()


transaction("c1", "commit")
transaction("a1", "abort")
transaction("c2", "commit")
transaction("a2", "abort")
transaction("c3", "commit")

seen, ends = read(TOPIC, 2, "read_committed", 30)
check(seen == committed, "read_committed: committed transactions only, in order: %r" % seen)
seen, uncommitted_ends = read(TOPIC, 2, "read_uncommitted", 50)
check(seen == everything, "read_uncommitted: every record: %r" % seen)
# 5 transactions of 5 records per partition, each ended by one control marker.
check(uncommitted_ends == {0: 30, 1: 30}, "high watermarks: %r" % uncommitted_ends)
check(ends == {0: 30, 1: 30}, "read_committed end offsets (LSO) with nothing open: %r" % ends)

# An open transaction: read_committed stops before it (LSO), read_uncommitted reads it.
open_start = {0: 30, 1: 30}
transaction("o1", "leave open")
seen, ends = read(TOPIC, 2, "read_committed", 30)
check(seen == committed, "read_committed stops at the open transaction: %r" % seen)
check(ends == open_start, "read_committed end offsets are the LSO (first open offset): %r" % ends)
seen, ends = read(TOPIC, 2, "read_uncommitted", 60)
check(seen == everything, "read_uncommitted sees the open transaction: %r" % seen)
check(ends == {0: 35, 1: 35}, "high watermarks with the open transaction: %r" % ends)
producer.commit_transaction()
for p in (0, 1):
    committed[p].extend(v for v in everything[p] if v.startswith("o1-"))
seen, _ = read(TOPIC, 2, "read_committed", 40)
check(seen == committed, "read_committed after the commit: %r" % seen)

# Consume-transform-produce: offsets committed in a transaction count only if it commits.
plain = KafkaProducer(bootstrap_servers=bootstrap)
for i in range(5):
    plain.send("py-txn-in", value=b"in-%d" % i, partition=0)
plain.flush()
group = KafkaConsumer("py-txn-in", bootstrap_servers=bootstrap, group_id="py-txn-group",
                      isolation_level="read_committed", enable_auto_commit=False,
                      auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=500)
inputs, deadline = [], time.time() + 20
while len(inputs) < 5 and time.time() < deadline:
    for tp, records in group.poll(timeout_ms=200).items():
        inputs.extend(r.value.decode() for r in records)
check(inputs == ["in-%d" % i for i in range(5)], "the group consumed the input: %r" % inputs)
tp_in = TopicPartition("py-txn-in", 0)
for outcome in ("abort", "commit"):
    producer.begin_transaction()
    for v in inputs:
        producer.send(TOPIC, value=("out-%s-%s" % (outcome, v)).encode(), partition=0)
    producer.send_offsets_to_transaction({tp_in: OffsetAndMetadata(5, "", -1)}, group.group_metadata())
    if outcome == "abort":
        producer.abort_transaction()
        check(group.committed(tp_in) is None, "aborted transaction commits no offset: %r" % group.committed(tp_in))
    else:
        producer.commit_transaction()
        check(group.committed(tp_in) == 5, "committed transaction commits the offset: %r" % group.committed(tp_in))
group.close()
seen, _ = read(TOPIC, 2, "read_committed", 45)
check(seen[0][-5:] == ["out-commit-%s" % v for v in inputs], "transformed records committed: %r" % seen[0][-7:])
check(not any(v.startswith("out-abort") for v in seen[0]), "aborted transformed records hidden: %r" % seen[0])
producer.close()

# A second producer with the same transactional id fences the first.
zombie = KafkaProducer(bootstrap_servers=bootstrap, transactional_id="py-txn-2")
zombie.init_transactions()
zombie.begin_transaction()
zombie.send(TOPIC, value=b"zombie", partition=1)
zombie.flush()
fresh = KafkaProducer(bootstrap_servers=bootstrap, transactional_id="py-txn-2")
fresh.init_transactions()
fresh.begin_transaction()
fresh.send(TOPIC, value=b"fresh", partition=1)
fresh.commit_transaction()
try:
    zombie.commit_transaction()
    check(False, "the fenced producer must not commit")
except Exception as e:
    print("fenced zombie:", type(e).__name__, e)
seen, _ = read(TOPIC, 2, "read_committed", 46)
check(seen[1][-1] == "fresh" and "zombie" not in seen[1], "only the new incarnation: %r" % seen[1][-3:])
print("kafka-python transactions: ok")
