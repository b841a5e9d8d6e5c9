#!/usr/bin/env bash
# Local Apache Kafka (KRaft, one combined broker+controller) without Docker.
#
#   ops/kafka/kafka.sh fetch    resolve the broker jars from Maven Central into the cache
#   ops/kafka/kafka.sh up       fetch if needed, format storage once, start, wait until ready
#   ops/kafka/kafka.sh down     stop the broker by its recorded PID (data is kept)
#   ops/kafka/kafka.sh status   print whether it runs, exit 0 if so
#   ops/kafka/kafka.sh reset    down, then delete the data directory
#
# Environment (all optional):
#   VIGIL_KAFKA_HOME             cache dir for jars, config, data, logs, PID (default <repo>/.cache/kafka)
#   VIGIL_KAFKA_PORT             client port on 127.0.0.1 (default 9092)
#   VIGIL_KAFKA_CONTROLLER_PORT  KRaft controller port (default 9093)
#   VIGIL_KAFKA_READY_TIMEOUT    seconds to wait for readiness (default 90)
#   VIGIL_PYTHON                 python with vigil installed, for the readiness probe (default <repo>/.venv/bin/python)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
home="${VIGIL_KAFKA_HOME:-$repo/.cache/kafka}"
port="${VIGIL_KAFKA_PORT:-9092}"
cport="${VIGIL_KAFKA_CONTROLLER_PORT:-9093}"
ready_timeout="${VIGIL_KAFKA_READY_TIMEOUT:-90}"
py="${VIGIL_PYTHON:-$repo/.venv/bin/python}"
libs="$home/libs"
data="$home/data"
conf="$home/server.properties"
pidfile="$home/broker.pid"
log="$home/broker.log"

die() { echo "kafka.sh: $*" >&2; exit 1; }

fetch() {
  if [ -f "$libs/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || die "maven (mvn) is required to resolve Kafka jars"
  command -v java >/dev/null || die "java 17+ is required to run Kafka"
  mkdir -p "$libs"
  echo "kafka.sh: resolving Apache Kafka jars from Maven Central into $libs" >&2
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$libs" -DincludeScope=runtime >&2 || die "maven could not resolve the Kafka jars"
  touch "$libs/.complete"
}

write_config() {
  mkdir -p "$data"
  cat > "$conf" <<CONF
# Written by ops/kafka/kafka.sh; edits are overwritten on the next 'up'.
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.quorum.bootstrap.servers=127.0.0.1:$cport
inter.broker.listener.name=PLAINTEXT
log.dirs=$data
num.partitions=6
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
CONF
  cp "$here/log4j2.yaml" "$home/log4j2.yaml"
}

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid; pid="$(cat "$pidfile")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  # Guard against PID reuse: the process must be our broker with our config.
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "kafka.Kafka $conf" || return 1
  echo "$pid"
}

# An array, so the classpath wildcard reaches java unexpanded.
java_cmd=(java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$home/log4j2.yaml" "-Dkafka.logs.dir=$home/logs" -cp "$libs/*")

format_once() {
  [ -f "$data/meta.properties" ] && return 0
  local cid; cid="$("${java_cmd[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
  [ -n "$cid" ] || die "could not generate a cluster id"
  "${java_cmd[@]}" kafka.tools.StorageTool format --standalone -t "$cid" -c "$conf" >>"$log" 2>&1 \
    || die "storage format failed, see $log"
}

probe() {
  if [ -x "$py" ] && "$py" -c "import streams.kafka" 2>/dev/null; then
    "$py" "$here/probe.py" "127.0.0.1:$port" 2>/dev/null
  else
    # Without vigil installed we can only check the port; the caller's first group join may retry.
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
  fi
}

up() {
  if pid="$(running_pid)"; then echo "kafka.sh: broker already running (pid $pid) on 127.0.0.1:$port"; return 0; fi
  fetch
  write_config
  format_once
  mkdir -p "$home/logs"
  # setsid: the broker outlives the shell that started it and gets its own process group.
  setsid "${java_cmd[@]}" kafka.Kafka "$conf" >>"$log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  local deadline=$((SECONDS + ready_timeout))
  until probe; do
    running_pid >/dev/null || { tail -n 30 "$log" >&2; die "broker exited during start, see $log"; }
    [ $SECONDS -lt $deadline ] || { tail -n 30 "$log" >&2; die "broker not ready after ${ready_timeout}s, see $log"; }
    sleep 0.5
  done
  echo "kafka.sh: broker ready (pid $(cat "$pidfile")) on 127.0.0.1:$port, data in $data"
}

down() {
  local pid
  if ! pid="$(running_pid)"; then rm -f "$pidfile"; echo "kafka.sh: broker not running"; return 0; fi
  kill -TERM "$pid"
  local deadline=$((SECONDS + 60))
  while kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then kill -KILL "$pid" 2>/dev/null || true; break; fi
    sleep 0.2
  done
  rm -f "$pidfile"
  echo "kafka.sh: broker stopped (pid $pid)"
}

status() {
  if pid="$(running_pid)"; then echo "running (pid $pid) on 127.0.0.1:$port"; else echo "stopped"; return 1; fi
}

case "${1:-}" in
  fetch) fetch ;;
  up) up ;;
  down) down ;;
  status) status ;;
  reset) down; rm -rf "$data" "$conf"; echo "kafka.sh: data removed" ;;
  *) echo "usage: $0 fetch|up|down|status|reset" >&2; exit 2 ;;
esac
