#!/bin/sh
# deploy/docker-compose.yaml's kafka-init: the topics and ACLs of deploy/local/kafka.py, created
# idempotently with Kafka's own tools as the admin user once the cluster answers.
set -eu
umask 077
config=/tmp/admin.properties
cat > "$config" <<PROPS
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${KAFKA_ADMIN_PASSWORD}";
PROPS
bootstrap=kafka-1:9092,kafka-2:9092,kafka-3:9092
bin=/opt/kafka/bin
tries=0
until "$bin/kafka-topics.sh" --bootstrap-server "$bootstrap" --command-config "$config" --list >/dev/null; do
  tries=$((tries + 1))
  [ "$tries" -lt 60 ] || { echo "kafka-init: the cluster did not answer" >&2; exit 1; }
  sleep 2
done
for topic in imagegate.accounts imagegate.images; do
  "$bin/kafka-topics.sh" --bootstrap-server "$bootstrap" --command-config "$config" \
    --create --if-not-exists --topic "$topic" --partitions 6 --replication-factor 3 \
    --config min.insync.replicas=2 --config unclean.leader.election.enable=false
done
acl() { "$bin/kafka-acls.sh" --bootstrap-server "$bootstrap" --command-config "$config" --add "$@"; }
acl --allow-principal User:relay --operation Write --operation Describe \
  --topic imagegate.accounts --topic imagegate.images
acl --allow-principal User:relay --operation IdempotentWrite --cluster
acl --allow-principal User:worker --operation Read --operation Describe \
  --topic imagegate.accounts --topic imagegate.images
acl --allow-principal User:worker --operation Read --group imagegate-worker
acl --allow-principal User:reader --operation Read --operation Describe --topic imagegate.accounts
acl --allow-principal User:reader --operation Read \
  --resource-pattern-type prefixed --group imagegate-replica-
echo "kafka-init: topics and ACLs in place"
