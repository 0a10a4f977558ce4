"""A kafka-python group member: prints its assignment and each record, commits each record.

Usage: group_member.py BOOTSTRAP GROUP TOPIC
Prints "assigned P P ..." on every assignment and "consumed PARTITION OFFSET" per record.
"""
import sys

from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener

bootstrap, group, topic = sys.argv[1], sys.argv[2], sys.argv[3]
consumer = KafkaConsumer(
    bootstrap_servers=bootstrap,
    group_id=group,
    client_id="kafka-python-member",
    enable_auto_commit=False,
    auto_offset_reset="earliest",
    session_timeout_ms=6000,
    heartbeat_interval_ms=300,
    max_poll_records=1,
)


class Listener(ConsumerRebalanceListener):
    def on_partitions_revoked(self, revoked):
        pass

    def on_partitions_assigned(self, assigned):
        parts = sorted(tp.partition for tp in assigned)
        print("assigned " + " ".join(str(p) for p in parts), flush=True)


consumer.subscribe([topic], listener=Listener())
while True:
    batch = consumer.poll(timeout_ms=100)
    for tp, records in batch.items():
        for r in records:
            # Processed (printed) before committed: at-least-once, as a careful consumer is.
            print("consumed %d %d" % (tp.partition, r.offset), flush=True)
            consumer.commit({TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(r.offset + 1, "", -1)})
