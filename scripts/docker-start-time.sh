#!/usr/bin/env bash
# Measures how fast the runnel image starts: wall time from `docker run` until the broker
# answers a Kafka ApiVersions/Metadata round trip (`runnel health` inside the container), and
# the broker's own "ready in" figure. Usage: ./scripts/docker-start-time.sh [IMAGE] [RUNS]
set -euo pipefail
image=${1:-${RUNNEL_IMAGE:-runnel:dev}}
runs=${2:-5}
for i in $(seq 1 "$runs"); do
  name="runnel-start-$$-$i"
  t0=$(date +%s%N)
  docker run -d --name "$name" -e RUNNEL_LISTEN=0.0.0.0:9092 \
    -e RUNNEL_ADVERTISED_LISTENER=127.0.0.1:9092 -e RUNNEL_METRICS_LISTEN= "$image" >/dev/null
  until docker exec "$name" /runnel health --bootstrap 127.0.0.1:9092 --timeout-ms 500 >/dev/null 2>&1; do
    sleep 0.01
  done
  t1=$(date +%s%N)
  ready=$(docker logs "$name" 2>&1 | sed -n 's/.*ready in \([0-9]*\) ms.*/\1/p' | head -1)
  echo "run $i: answering $(( (t1 - t0) / 1000000 )) ms after docker run (broker: ready in ${ready} ms)"
  docker rm -f -v "$name" >/dev/null
done
docker image inspect -f 'image {{.RepoTags}}: {{.Size}} bytes' "$image"
