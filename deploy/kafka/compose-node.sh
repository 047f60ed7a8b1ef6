#!/bin/sh
# One node of deploy/docker-compose.yaml's Kafka cluster (apache/kafka image), configured from
# the same template as the local stack's: render it, format the storage once with the SCRAM
# users (so they exist before the first start), then run the broker + controller.
set -eu
umask 077
conf=/tmp/server.properties
sed -e "s|\${NODE_ID}|${NODE_ID}|g" \
    -e "s|\${HOST}|${HOST}|g" \
    -e "s|\${CLIENT_PORT}|9092|g" \
    -e "s|\${BROKER_PORT}|9093|g" \
    -e "s|\${CONTROLLER_PORT}|9094|g" \
    -e "s|\${VOTERS}|1@kafka-1:9094,2@kafka-2:9094,3@kafka-3:9094|g" \
    -e "s|\${DATA_DIR}|/var/lib/kafka/data|g" \
    -e "s|\${NODE_PASSWORD}|${KAFKA_NODE_PASSWORD}|g" \
    /etc/imagegate/server.properties.template > "$conf"
scram() { echo "SCRAM-SHA-512=[name=$1,password=$2]"; }
/opt/kafka/bin/kafka-storage.sh format --ignore-formatted \
  --cluster-id "$KAFKA_CLUSTER_ID" --config "$conf" \
  --add-scram "$(scram admin "$KAFKA_ADMIN_PASSWORD")" \
  --add-scram "$(scram relay "$KAFKA_RELAY_PASSWORD")" \
  --add-scram "$(scram worker "$KAFKA_WORKER_PASSWORD")" \
  --add-scram "$(scram reader "$KAFKA_READER_PASSWORD")"
exec /opt/kafka/bin/kafka-server-start.sh "$conf"
