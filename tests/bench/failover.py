"""Failover time of a Runnel cluster: kill -9 the leader of a 1-partition, RF=3 topic and
time the first acknowledged (acks=all) produce after it.

Usage: start `runnel dev --base-port 39092 --data-dir /tmp/bdev`, then
  target/pyenv/bin/python tests/bench/failover.py [topic] [bootstrap]
The leader's process is found with pgrep ("serve --node-id N"), so the cluster must run on
this machine. Restart the killed broker (or the whole `runnel dev`) before running it again.
"""
import os
import signal
import subprocess
import sys
import time

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

topic = sys.argv[1] if len(sys.argv) > 1 else "failover"
bootstrap = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1:39092,127.0.0.1:39093,127.0.0.1:39094"
admin = KafkaAdminClient(bootstrap_servers=bootstrap)
try:
    admin.create_topics([NewTopic(topic, 1, 3)])
except Exception as e:  # already there from an earlier run
    print("create:", e)
time.sleep(3)
leader = admin.describe_topics([topic])[0]["partitions"][0]["leader_id"]
producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=100,
                         retry_backoff_ms=20, request_timeout_ms=3000,
                         metadata_max_age_ms=1000, max_block_ms=10000)
producer.send(topic, b"before").get(10)
pid = int(subprocess.check_output(["pgrep", "-f", f"serve --node-id {leader} "]).split()[0])
start = time.time()
os.kill(pid, signal.SIGKILL)
while True:
    try:
        producer.send(topic, b"after").get(10)
        break
    except Exception:
        pass
print(f"leader {leader} killed; first acks=all produce succeeded {int((time.time() - start) * 1000)} ms later")
