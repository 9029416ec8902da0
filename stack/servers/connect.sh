# shellcheck shell=bash
# Kafka Connect 4.x, one worker in distributed mode, REST on http://127.0.0.1:8083,
# with the Debezium MySQL, MariaDB and PostgreSQL connectors. Needs the kafka server
# (127.0.0.1:9092). Sourced by stack/keel-stack; see the module interface there.
#
#   jars     $(stack_cache_dir connect)/lib-<version>/   (Maven; ~/.m2 is the cache)
#   plugins  $(stack_cache_dir connect)/plugins/debezium-connector-{mysql,mariadb,postgres}/
#            $(stack_cache_dir connect)/plugins/apicurio-registry-converter/ (ADR 0006)
#   config   $(stack_data_dir connect)/connect-distributed.properties (from stack/conf/connect/)
#   state    topics keel-connect-{configs,offsets,status} on the broker (group keel-connect)
#   log      $(stack_log_file connect)
#   metrics  http://127.0.0.1:9404/metrics: the Prometheus JMX exporter agent (stack/lib.sh) with
#            the compose stack's rules, docker/prometheus/jmx-connect.yml (connector status,
#            Debezium's MilliSecondsBehindSource, records polled; docs/metrics.md)
#
# Debezium publishes each connector on Maven as a tar.gz with classifier "plugin" that
# holds the connector and its own dependencies; each is unpacked into its own folder
# under plugin.path (Connect gives each folder its own class loader), never onto the
# worker classpath. The MariaDB connector is not served at 3.6.x by the Maven registry we
# reach (3.6.0-3.6.3 and 3.5.1-3.5.2 are refused): 3.5.0.Final is the newest that resolves.
# Versions can be overridden with KEEL_CONNECT_VERSION and KEEL_DEBEZIUM_*_VERSION.
#
# The table CDC topics (carts, cart_items, the payment ledger) are Avro in the Confluent wire
# format through Apicurio Registry's Kafka Connect converter (docs/adr/0006-table-cdc-avro.md):
# io.apicurio:apicurio-registry-utils-converter and its dependencies, resolved from Maven into
# plugins/apicurio-registry-converter/ (its own class loader). 2.6.13.Final because no 3.x
# version resolves from the Maven registry we reach (3.1.x-3.3.3: the jar is refused; 3.0.9:
# its parent POM is refused); its v2 client talks to Apicurio 3.3.3's /apis/registry/v2.
# Jars the worker itself provides (Kafka clients, Connect API/JSON, slf4j, compression codecs)
# are left out, and a ServiceLoader manifest is added: plugin.discovery=service_load finds only
# plugins that declare themselves, and the converter's jar does not.
# KEEL_APICURIO_CONVERTER_VERSION overrides the version.

connect_VERSION="${KEEL_CONNECT_VERSION:-${KEEL_KAFKA_VERSION:-4.3.1}}"
connect_LOG4J_VERSION="${KEEL_KAFKA_LOG4J_VERSION:-2.25.4}"
connect_DEBEZIUM_MYSQL_VERSION="${KEEL_DEBEZIUM_MYSQL_VERSION:-3.6.1.Final}"
connect_DEBEZIUM_POSTGRES_VERSION="${KEEL_DEBEZIUM_POSTGRES_VERSION:-3.6.1.Final}"
connect_DEBEZIUM_MARIADB_VERSION="${KEEL_DEBEZIUM_MARIADB_VERSION:-3.5.0.Final}"
connect_APICURIO_CONVERTER_VERSION="${KEEL_APICURIO_CONVERTER_VERSION:-2.6.13.Final}"
# The converter class Keel's table CDC connectors name (keel_connectors::AVRO_CONVERTER).
connect_AVRO_CONVERTER="io.apicurio.registry.utils.converter.AvroConverter"
# Where the JMX exporter agent serves the worker's metrics (KEEL_CONNECT_METRICS_PORT).
connect_METRICS_PORT="${KEEL_CONNECT_METRICS_PORT:-9404}"
# shellcheck disable=SC2034  # keel-stack reads connect_PORTS and connect_TIMEOUT indirectly
connect_PORTS="8083 $connect_METRICS_PORT"
# shellcheck disable=SC2034
connect_TIMEOUT=180
connect_HEAP="${KEEL_CONNECT_HEAP:--Xms128m -Xmx512m}"
# The connector classes whose presence in GET /connector-plugins makes the worker healthy.
connect_REQUIRED_PLUGINS="io.debezium.connector.mysql.MySqlConnector
io.debezium.connector.mariadb.MariaDbConnector
io.debezium.connector.postgresql.PostgresConnector"

connect_java() { printf '%s' "${JAVA_HOME:+$JAVA_HOME/bin/}java"; }
connect_lib_dir() { printf '%s/lib-%s' "$(stack_cache_dir connect)" "$connect_VERSION"; }
connect_plugin_dir() { printf '%s/plugins' "$(stack_cache_dir connect)"; }
connect_config_file() { printf '%s/connect-distributed.properties' "$(stack_data_dir connect)"; }
connect_url() { printf 'http://%s:8083' "$KEEL_STACK_HOST"; }

# Fetch one Debezium plugin archive and unpack it into plugins/<artifact>/, once per version.
#   connect_install_plugin <artifactId> <version>
connect_install_plugin() {
  local artifact="$1" version="$2" cache dest tarball tmp
  cache="$(stack_cache_dir connect)"
  dest="$(connect_plugin_dir)/$artifact"
  if [ -f "$dest/.keel-version" ] && [ "$(cat "$dest/.keel-version")" = "$version" ]; then
    return 0
  fi
  tarball="$cache/downloads/$artifact-$version-plugin.tar.gz"
  stack_log "connect: fetching io.debezium:$artifact:$version (plugin tar.gz)"
  # (in a subshell from the cache dir: mvn must not pick up a pom.xml from the caller's
  # directory, and stack_maven_file's stack_die then fails only this step)
  (cd "$cache" && stack_maven_file "io.debezium:$artifact:$version:tar.gz:plugin" "$tarball") || return 1
  mkdir -p "$(connect_plugin_dir)"
  tmp="$(mktemp -d "$cache/unpack.XXXXXX")" || return 1
  if ! tar -xzf "$tarball" -C "$tmp" || [ ! -d "$tmp/$artifact" ]; then
    rm -rf "$tmp" "$tarball"
    stack_log "connect: $tarball did not unpack to a $artifact/ folder"
    return 1
  fi
  printf '%s\n' "$version" >"$tmp/$artifact/.keel-version"
  rm -rf "$dest"
  mv "$tmp/$artifact" "$dest"
  rm -rf "$tmp" "$tarball"   # ~/.m2 keeps the archive
}

# Resolve Apicurio's Kafka Connect converter with its dependencies into
# plugins/apicurio-registry-converter/, once per version (see the header).
connect_install_converter() {
  local version="$connect_APICURIO_CONVERTER_VERSION" dest tmp manifest
  dest="$(connect_plugin_dir)/apicurio-registry-converter"
  if [ -f "$dest/.keel-version" ] && [ "$(cat "$dest/.keel-version")" = "$version" ]; then
    return 0
  fi
  stack_log "connect: fetching io.apicurio:apicurio-registry-utils-converter:$version (registry converter)"
  mkdir -p "$(connect_plugin_dir)"
  tmp="$(mktemp -d "$(stack_cache_dir connect)/unpack.XXXXXX")" || return 1
  # (in a subshell: stack_maven_libs' stack_die then fails only this step)
  (stack_maven_libs "$tmp/lib" "io.apicurio:apicurio-registry-utils-converter:$version") || {
    rm -rf "$tmp"; return 1; }
  rm -f "$tmp"/lib/kafka-clients-*.jar "$tmp"/lib/connect-api-*.jar "$tmp"/lib/connect-json-*.jar \
    "$tmp"/lib/slf4j-api-*.jar "$tmp"/lib/lz4-java-*.jar "$tmp"/lib/snappy-java-*.jar \
    "$tmp"/lib/zstd-jni-*.jar "$tmp/lib/.complete"
  manifest="$tmp/manifest"
  mkdir -p "$manifest/META-INF/services"
  printf '%s\n' "$connect_AVRO_CONVERTER" \
    >"$manifest/META-INF/services/org.apache.kafka.connect.storage.Converter"
  (cd "$manifest" && python3 -m zipfile -c "$tmp/lib/keel-converter-manifest.jar" META-INF) || {
    rm -rf "$tmp"; return 1; }
  printf '%s\n' "$version" >"$tmp/lib/.keel-version"
  rm -rf "$dest"
  mv "$tmp/lib" "$dest"
  rm -rf "$tmp"
}

connect_install() {
  stack_jmx_exporter_install || return 1
  stack_maven_libs "$(connect_lib_dir)" \
    "org.apache.kafka:connect-runtime:$connect_VERSION" \
    "org.apache.kafka:connect-json:$connect_VERSION" \
    "org.apache.kafka:connect-file:$connect_VERSION" \
    "org.apache.logging.log4j:log4j-slf4j-impl:$connect_LOG4J_VERSION" \
    "org.apache.logging.log4j:log4j-core:$connect_LOG4J_VERSION" \
    "org.apache.logging.log4j:log4j-api:$connect_LOG4J_VERSION" || return 1
  connect_install_plugin debezium-connector-mysql "$connect_DEBEZIUM_MYSQL_VERSION" || return 1
  connect_install_plugin debezium-connector-mariadb "$connect_DEBEZIUM_MARIADB_VERSION" || return 1
  connect_install_plugin debezium-connector-postgres "$connect_DEBEZIUM_POSTGRES_VERSION" || return 1
  connect_install_converter || return 1
}

connect_render_config() {
  local conf
  conf="$(connect_config_file)"
  mkdir -p "$(stack_data_dir connect)"
  sed -e "s|{{HOST}}|$KEEL_STACK_HOST|g" \
      -e "s|{{BOOTSTRAP}}|$KEEL_STACK_HOST:9092|g" \
      -e "s|{{PLUGIN_PATH}}|$(connect_plugin_dir)|g" \
    "$STACK_ROOT/conf/connect/connect-distributed.properties" >"$conf.tmp" && mv "$conf.tmp" "$conf"
}

connect_start() {
  if ! stack_port_open 9092; then
    stack_log "connect: no Kafka broker on $KEEL_STACK_HOST:9092; start it first (keel-stack up kafka connect)"
    return 1
  fi
  connect_render_config || return 1
  local agent
  agent="$(stack_jmx_agent_opt "$connect_METRICS_PORT" "$STACK_JMX_RULES_DIR/jmx-connect.yml")"
  # shellcheck disable=SC2086  # connect_HEAP is a list of JVM flags
  stack_spawn connect "$(connect_java)" $connect_HEAP ${agent:+"$agent"} \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError \
    -XX:ErrorFile="$(stack_data_dir connect)/hs_err_pid%p.log" \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$STACK_ROOT/conf/connect/log4j2.xml" \
    -cp "$(connect_lib_dir)/*" org.apache.kafka.connect.cli.ConnectDistributed "$(connect_config_file)"
}

# Healthy once the worker has joined its group (GET /connectors answers) and the
# Debezium connectors were loaded from plugin.path (GET /connector-plugins lists them).
connect_healthy() {
  local plugins cls
  plugins="$(curl -fsS --max-time 5 "$(connect_url)/connector-plugins" 2>/dev/null)" || return 1
  while read -r cls; do
    [[ "$plugins" == *"\"$cls\""* ]] || return 1
  done <<<"$connect_REQUIRED_PLUGINS"
  stack_http_ok "$(connect_url)/connectors"
}
