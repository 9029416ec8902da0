# shellcheck shell=bash
# Apache Cassandra 5.0, one node on 127.0.0.1, on the machine's Java 17.
#
# Install: org.apache.cassandra:cassandra-all and its runtime dependencies from the Maven
#   registry into $(stack_cache_dir cassandra)/<version>/lib (logback, jna, netty, jamm...
#   all come with it; no Apache archive tarball needed).
# Start:   java ... org.apache.cassandra.service.CassandraDaemon in the foreground, with the
#   config rendered from stack/conf/cassandra/ into $(stack_data_dir cassandra)/conf.
# Ports:   9042 CQL (native protocol), 7000 storage (inter-node), 7199 JMX (loopback only).
# Healthy: a CQL OPTIONS request on 9042 is answered with SUPPORTED. Cassandra opens the
#   native port as the last step of startup ("Starting listening for CQL clients"), after
#   the node has replayed its commit log and joined its ring, so this means ready.
#
# Knobs (environment of `keel-stack up`):
#   KEEL_CASSANDRA_VERSION   cassandra-all version (default below)
#   KEEL_CASSANDRA_JVM_OPTS  extra JVM flags, appended last (e.g. "-Xmx2g")
#   JAVA_HOME                Java 11 or 17 (default: java on PATH)

cassandra_VERSION="${KEEL_CASSANDRA_VERSION:-5.0.9}"
# shellcheck disable=SC2034  # keel-stack reads cassandra_PORTS and cassandra_TIMEOUT indirectly
cassandra_PORTS="9042 7000 7199"
# shellcheck disable=SC2034
cassandra_TIMEOUT=180
cassandra_JMX_PORT=7199

cassandra_home() { printf '%s/%s' "$(stack_cache_dir cassandra)" "$cassandra_VERSION"; }
cassandra_conf_src() { printf '%s/conf/cassandra' "$STACK_ROOT"; }

cassandra_java() {
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
    printf '%s' "$JAVA_HOME/bin/java"
  else
    command -v java
  fi
}

cassandra_install() {
  local home lib
  home="$(cassandra_home)"; lib="$home/lib"
  [ -n "$(cassandra_java)" ] || { stack_log "cassandra: no java on PATH (need Java 11 or 17)"; return 1; }
  stack_maven_libs "$lib" "org.apache.cassandra:cassandra-all:$cassandra_VERSION" || return 1
  [ -f "$lib/cassandra-all-$cassandra_VERSION.jar" ] || { stack_log "cassandra: $lib has no cassandra-all jar"; return 1; }
  compgen -G "$lib/jamm-*.jar" >/dev/null || { stack_log "cassandra: $lib has no jamm agent jar"; return 1; }
}

# The JVM flags from the options file: every line that starts with '-'.
cassandra_jvm_file_opts() {
  local line
  while IFS= read -r line || [ -n "$line" ]; do
    line="${line#"${line%%[![:space:]]*}"}"   # trim leading blanks
    line="${line%"${line##*[![:space:]]}"}"   # trim trailing blanks
    case "$line" in -*) printf '%s\n' "$line" ;; esac
  done <"$(cassandra_conf_src)/jvm17-server.options"
}

cassandra_start() {
  local home lib data conf java jamm opts=() extra=()
  home="$(cassandra_home)"; lib="$home/lib"
  data="$(stack_data_dir cassandra)"; conf="$data/conf"
  java="$(cassandra_java)"
  jamm="$(compgen -G "$lib/jamm-*.jar" | head -n1)"
  mkdir -p "$data/data" "$data/commitlog" "$data/saved_caches" "$data/hints" "$data/cdc_raw" \
    "$data/logs" "$data/triggers" "$conf" || return 1

  # Render the config on every start so edits to stack/conf/cassandra take effect.
  sed -e "s|@DATA_DIR@|$data|g" -e "s|@HOST@|$KEEL_STACK_HOST|g" \
    "$(cassandra_conf_src)/cassandra.yaml" >"$conf/cassandra.yaml" || return 1
  cp "$(cassandra_conf_src)/logback.xml" "$conf/logback.xml" || return 1

  mapfile -t opts < <(cassandra_jvm_file_opts)
  # shellcheck disable=SC2206 # word splitting of the extra flags is intended
  extra=(${KEEL_CASSANDRA_JVM_OPTS:-})
  opts+=(
    "-javaagent:$jamm"
    "-Dcassandra.config=file://$conf/cassandra.yaml"
    "-Dcassandra.storagedir=$data"
    "-Dcassandra.logdir=$data/logs"
    "-Dcassandra.triggers_dir=$data/triggers"
    "-Dlogback.configurationFile=file://$conf/logback.xml"
    "-Dcassandra-foreground=yes"
    # JMX bound to the loopback address only, no authentication (like LOCAL_JMX=yes).
    "-Dcassandra.jmx.local.port=$cassandra_JMX_PORT"
    "-Dcom.sun.management.jmxremote.authenticate=false"
    "-Dcom.sun.management.jmxremote.rmi.port=$cassandra_JMX_PORT"
    "-Djava.rmi.server.hostname=$KEEL_STACK_HOST"
    "-XX:HeapDumpPath=$data/logs"
    "-XX:ErrorFile=$data/logs/hs_err_pid%p.log"
    "${extra[@]}"
  )
  # Cassandra mlockall()s its memory at startup when it may (root has CAP_IPC_LOCK):
  # that faults in and pins the whole committed heap (RSS ~1 GB right away) and costs
  # ~1s, for no gain on a test box. Drop the capability, so the default memlock limit
  # applies and Cassandra logs a warning and goes on unlocked.
  local pre=()
  if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
    pre=(setpriv --inh-caps=-ipc_lock --bounding-set=-ipc_lock)
  fi
  # Run from the data dir so nothing lands in the caller's working directory.
  ( cd "$data" || exit 1
    ulimit -S -l 64 2>/dev/null
    stack_spawn cassandra "${pre[@]}" "$java" "${opts[@]}" \
      -cp "$lib/*" org.apache.cassandra.service.CassandraDaemon )
}

# nodetool against the running node over its loopback JMX port, e.g.
#   (. stack/lib.sh; . stack/servers/cassandra.sh; cassandra_nodetool status)
cassandra_nodetool() {
  local lib opts=()
  lib="$(cassandra_home)/lib"
  mapfile -t opts < <(cassandra_jvm_file_opts | grep -E '^--add-(exports|opens)')
  "$(cassandra_java)" "${opts[@]}" -Xmx256m -XX:TieredStopAtLevel=1 \
    -Dcassandra.logdir="$(stack_data_dir cassandra)/logs" \
    -Dlogback.configurationFile="file://$(stack_data_dir cassandra)/conf/logback.xml" \
    -cp "$lib/*" org.apache.cassandra.tools.NodeTool -h "$KEEL_STACK_HOST" -p "$cassandra_JMX_PORT" "$@"
}

# A CQL OPTIONS request (protocol v4, stream 1) must come back as SUPPORTED:
# response header byte 0 = 0x84 (v4 response), byte 4 = opcode 0x06.
cassandra_cql_ping() {
  # shellcheck disable=SC2016  # expanded by the inner bash
  timeout 5 bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 1
    printf "\x04\x00\x00\x01\x05\x00\x00\x00\x00" >&3
    hdr="$(head -c 9 <&3 | od -An -tx1 | tr -d " \n")"
    [ "${hdr:0:2}" = 84 ] && [ "${hdr:8:2}" = 06 ]
  ' "$KEEL_STACK_HOST" 9042 2>/dev/null
}

cassandra_healthy() {
  stack_port_open 9042 && cassandra_cql_ping
}

# No cassandra_stop: the default (SIGTERM, up to 60s, then KILL) is right. Cassandra
# drains on SIGTERM (flushes memtables, closes the commit log); that takes ~5s here.
