"""kafka-python's admin client against a runnel broker: configs, partitions, deletes.

Usage: admin.py BOOTSTRAP. Exits non-zero with a message on the first failed check.
"""
import sys

from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic

bootstrap = sys.argv[1]


def check(cond, msg):
    if not cond:
        print("FAIL:", msg, file=sys.stderr)
        sys.exit(1)


admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
admin.create_topics([NewTopic("cfg", 1, 1, topic_configs={"retention.ms": "3600000"})])


def topic_configs(keys=None):
    res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "cfg", configs=keys)], config_filter="all")
    return {name: entry["value"] for name, entry in res["topic"]["cfg"].items()}


configs = topic_configs()
check(configs.get("retention.ms") == "3600000", "retention.ms set at creation: %r" % configs)
check(len(configs) >= 20, "every topic config is described (%d)" % len(configs))
named = topic_configs({"cleanup.policy": None, "segment.bytes": None})
check(named.get("cleanup.policy") == "delete", "cleanup.policy default described: %r" % named)
check(named.get("segment.bytes") == "1073741824", "segment.bytes default described: %r" % named)

admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "cfg", configs={"retention.ms": "7200000", "cleanup.policy": "compact"})])
configs = topic_configs()
check(configs.get("retention.ms") == "7200000", "alter_configs round trip: %r" % configs)
check(configs.get("cleanup.policy") == "compact", "alter_configs cleanup.policy: %r" % configs)

refused = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "cfg", configs={"retention.ms": "soon"})])
check("Error 40" in str(refused["topic"]["cfg"]), "INVALID_CONFIG for a bad value: %r" % refused)
check(topic_configs().get("retention.ms") == "7200000", "a refused change changes nothing")

brokers = admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, "1", configs={"log.retention.ms": None, "broker.rack": None})], config_filter="all")
names = set(brokers["broker"]["1"].keys())
check({"log.retention.ms", "broker.rack"} <= names, "broker configs described: %r" % brokers)

admin.create_partitions({"cfg": NewPartitions(3)})
check(len(admin.describe_topics(["cfg"])[0]["partitions"]) == 3, "create_partitions grew the topic")

producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
for i in range(10):
    producer.send("cfg", key=b"k%d" % i, value=b"x", partition=0).get(timeout=10)
producer.flush()
try:
    producer.send("cfg", value=b"no key", partition=0).get(timeout=10)
    check(False, "a compacted topic must refuse records without a key")
except Exception as e:
    check("InvalidRecord" in type(e).__name__ or "87" in str(e), "INVALID_RECORD for a keyless record: %r" % e)
result = admin.delete_records({TopicPartition("cfg", 0): 4})
check(result[TopicPartition("cfg", 0)]["low_watermark"] == 4, "delete_records low watermark: %r" % result)

cluster = admin.describe_cluster()
check(cluster["cluster_id"], "describe_cluster has a cluster id: %r" % cluster)

admin.delete_topics(["cfg"])
check("cfg" not in admin.list_topics(), "deleted topic is gone")
admin.create_topics([NewTopic("cfg", 1, 1)])
check("cfg" in admin.list_topics(), "a deleted topic can be created again")
print("kafka-python admin: ok")
