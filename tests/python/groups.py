"""kafka-python's consumer group and admin client against a runnel broker: a member joins,
consumes and commits with metadata; list/describe/offsets/delete through the admin client.

Usage: groups.py BOOTSTRAP. Exits non-zero with a message on the first failed check.
"""
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import NewTopic

bootstrap = sys.argv[1]


def check(cond, msg):
    if not cond:
        print("FAIL:", msg, file=sys.stderr)
        sys.exit(1)


admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
admin.create_topics([NewTopic("py-groups", 2, 1)])
producer = KafkaProducer(bootstrap_servers=bootstrap)
for i in range(20):
    producer.send("py-groups", value=b"v%d" % i, partition=i % 2)
producer.flush()

consumer = KafkaConsumer(
    "py-groups",
    bootstrap_servers=bootstrap,
    group_id="py-group",
    client_id="py-member",
    enable_auto_commit=False,
    auto_offset_reset="earliest",
    session_timeout_ms=6000,
    heartbeat_interval_ms=500,
)
seen = 0
deadline = time.time() + 30
while seen < 20 and time.time() < deadline:
    for tp, records in consumer.poll(timeout_ms=200).items():
        seen += len(records)
check(seen == 20, "consumed all 20 records in a group (%d)" % seen)
consumer.commit({TopicPartition("py-groups", 0): OffsetAndMetadata(7, "note", -1)})
check(consumer.committed(TopicPartition("py-groups", 0)) == 7, "committed offset read back")

listed = {g["group_id"]: g for g in admin.list_groups()}
check(
    listed.get("py-group", {}).get("group_state") == "Stable"
    and listed["py-group"]["protocol_type"] == "consumer"
    and listed["py-group"]["group_type"] == "classic",
    "list_groups: %r" % listed,
)
described = admin.describe_groups(["py-group"])["py-group"]
check(described["group_state"] == "Stable", "describe state: %r" % described)
check(described["protocol_data"] == "range", "protocol: %r" % described)
members = described["members"]
check(len(members) == 1 and members[0]["client_id"] == "py-member", "members: %r" % members)
check(members[0]["member_metadata"]["topics"] == ["py-groups"], "subscription: %r" % members)
parts = sorted(p for a in members[0]["member_assignment"]["assigned_partitions"] for p in a["partitions"])
check(parts == [0, 1], "the member's assignment decodes to both partitions: %r" % members)
offsets = admin.list_group_offsets({"py-group": None})["py-group"]
tp0 = offsets.get(TopicPartition("py-groups", 0))
check(tp0 is not None and tp0.offset == 7 and tp0.metadata == "note", "offsets with metadata: %r" % offsets)

# A group with a member cannot be deleted; once it left, it can.
result = admin.delete_groups(["py-group"])
check(str(result.get("py-group")) == "NonEmptyGroupError", "NON_EMPTY_GROUP while a member is in: %r" % result)
consumer.close()
result = admin.delete_groups(["py-group"])
check(str(result.get("py-group")) == "OK", "deleted once empty: %r" % result)
check(all(g["group_id"] != "py-group" for g in admin.list_groups()), "the deleted group is gone")
print("groups: ok")
