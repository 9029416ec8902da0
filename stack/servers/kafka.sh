# shellcheck shell=bash
# Apache Kafka 4.x, one KRaft node (broker + controller in one JVM) on 127.0.0.1:
# PLAINTEXT 9092, CONTROLLER 9093. Sourced by stack/keel-stack; see the module
# interface at the top of that file.
#
#   jars    $(stack_cache_dir kafka)/lib-<version>/   (resolved from Maven, ~/.m2 is the cache)
#   config  $(stack_data_dir kafka)/server.properties (rendered from stack/conf/kafka/)
#   data    $(stack_data_dir kafka)/kraft-logs/        (formatted once: meta.properties)
#   log     $(stack_log_file kafka)                    (log4j2 -> stdout -> the log file)
#   metrics http://127.0.0.1:9405/metrics: the Prometheus JMX exporter agent (stack/lib.sh)
#           with the rules in docker/prometheus/jmx-kafka.yml (docs/metrics.md, role `kafka`)
#
# Kafka 4.x logs through slf4j-api 1.7.36 and ships log4j-core 2.x as its backend, but
# the Maven poms name no slf4j binding: log4j-slf4j-impl (the slf4j 1.x binding, not the
# 2.x "log4j-slf4j2-impl") is added here, at the log4j version kafka-server asks for.
#
# Version: Debezium 3.6.1 is built against Kafka 4.3.0; 4.3.1 is that line's bug-fix
# release. Override with KEEL_KAFKA_VERSION (and KEEL_KAFKA_LOG4J_VERSION to match the
# log4j-core version that Kafka release depends on).

kafka_VERSION="${KEEL_KAFKA_VERSION:-4.3.1}"
kafka_LOG4J_VERSION="${KEEL_KAFKA_LOG4J_VERSION:-2.25.4}"
# Where the JMX exporter agent serves the broker's metrics (KEEL_KAFKA_METRICS_PORT).
kafka_METRICS_PORT="${KEEL_KAFKA_METRICS_PORT:-9405}"
# shellcheck disable=SC2034  # keel-stack reads kafka_PORTS and kafka_TIMEOUT indirectly
kafka_PORTS="9092 9093 $kafka_METRICS_PORT"
# shellcheck disable=SC2034
kafka_TIMEOUT=120
kafka_HEAP="${KEEL_KAFKA_HEAP:--Xms256m -Xmx768m}"

kafka_java() { printf '%s' "${JAVA_HOME:+$JAVA_HOME/bin/}java"; }
kafka_lib_dir() { printf '%s/lib-%s' "$(stack_cache_dir kafka)" "$kafka_VERSION"; }
kafka_config_file() { printf '%s/server.properties' "$(stack_data_dir kafka)"; }
kafka_log_dir() { printf '%s/kraft-logs' "$(stack_data_dir kafka)"; }

kafka_install() {
  stack_jmx_exporter_install || return 1
  stack_maven_libs "$(kafka_lib_dir)" \
    "org.apache.kafka:kafka_2.13:$kafka_VERSION" \
    "org.apache.kafka:kafka-tools:$kafka_VERSION" \
    "org.apache.logging.log4j:log4j-slf4j-impl:$kafka_LOG4J_VERSION" \
    "org.apache.logging.log4j:log4j-core:$kafka_LOG4J_VERSION" \
    "org.apache.logging.log4j:log4j-api:$kafka_LOG4J_VERSION"
}

# Run a Kafka command-line class from the stack's lib dir in the foreground, logging
# warnings only, e.g.
#   kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 --list
kafka_tool() {
  local main="$1"; shift
  "$(kafka_java)" -Xmx256m -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$STACK_ROOT/conf/kafka/tools-log4j2.xml" \
    -cp "$(kafka_lib_dir)/*" "$main" "$@"
}

kafka_render_config() {
  local data conf
  data="$(stack_data_dir kafka)"; conf="$(kafka_config_file)"
  mkdir -p "$data"
  sed -e "s|{{HOST}}|$KEEL_STACK_HOST|g" -e "s|{{DATA_DIR}}|$data|g" \
    "$STACK_ROOT/conf/kafka/server.properties" >"$conf.tmp" && mv "$conf.tmp" "$conf"
}

# Format the storage once; a formatted log dir has meta.properties.
kafka_format() {
  local log cluster_id
  [ -f "$(kafka_log_dir)/meta.properties" ] && return 0
  log="$(stack_log_file kafka)"
  # A cluster id is 16 random bytes in URL-safe base64 without padding (22 characters).
  cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
  stack_log "kafka: formatting $(kafka_log_dir) (cluster id $cluster_id)"
  printf '\n===== %s: formatting kafka storage =====\n' "$(date -u +%FT%TZ)" >>"$log"
  kafka_tool kafka.tools.StorageTool format -t "$cluster_id" -c "$(kafka_config_file)" >>"$log" 2>&1
}

kafka_start() {
  kafka_render_config || return 1
  kafka_format || return 1
  local agent
  agent="$(stack_jmx_agent_opt "$kafka_METRICS_PORT" "$STACK_JMX_RULES_DIR/jmx-kafka.yml")"
  # shellcheck disable=SC2086  # kafka_HEAP is a list of JVM flags
  stack_spawn kafka "$(kafka_java)" $kafka_HEAP ${agent:+"$agent"} \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError \
    -XX:ErrorFile="$(stack_data_dir kafka)/hs_err_pid%p.log" \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$STACK_ROOT/conf/kafka/log4j2.xml" \
    -Dkafka.logs.dir="$(dirname "$(stack_log_file kafka)")" \
    -cp "$(kafka_lib_dir)/*" kafka.Kafka "$(kafka_config_file)"
}

# Healthy once the port accepts connections and this run of the server has logged that
# it started (the port is bound a little before the broker serves requests).
kafka_healthy() {
  stack_port_open 9092 || return 1
  awk '/^===== .*: starting kafka =====$/ { ok = 0 } /Kafka Server started/ { ok = 1 }
       END { exit !ok }' "$(stack_log_file kafka)" 2>/dev/null
}

# Warns (stderr) when the broker's open files or its partition directories pass
# KEEL_STACK_FD_WARN_PCT (default 80) % of its open-file limit: the broker keeps files open for
# every partition, and leftover test topics once exhausted it ("Too many open files", then every
# log dir failed). `keel-stack status` calls it; it does not change the exit status.
kafka_fd_warning() {
  local pid limit fds dirs most pct="${KEEL_STACK_FD_WARN_PCT:-80}"
  pid="$(stack_pid kafka)" || return 0
  limit="$(awk '/^Max open files/ { print $4 }' "/proc/$pid/limits" 2>/dev/null)"
  [[ "$limit" =~ ^[0-9]+$ ]] || return 0 # unlimited, or not ours to read
  fds="$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
  dirs="$(find "$(kafka_log_dir)" -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l)"
  most=$((fds > dirs ? fds : dirs))
  [ $((most * 100)) -gt $((limit * pct)) ] || return 0
  stack_log "warning: kafka has $fds open files and $dirs partition directories, over $pct % of its open-file limit $limit (ulimit -n)"
  stack_log "  leftover test topics? restart it empty: stack/keel-stack down && rm -rf $(stack_data_dir kafka) && stack/keel-stack up"
  stack_log "  (Connect's connectors live in Kafka and go too), or raise the limit: stack/keel-stack down, ulimit -n <higher>, stack/keel-stack up"
}
