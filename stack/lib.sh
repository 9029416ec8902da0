# shellcheck shell=bash
# Shared helpers for the local stack. Sourced by stack/keel-stack and by every
# stack/servers/<name>.sh module; nothing here starts a server by itself.
#
# Layout on disk (all outside the clone, so a second `up` downloads nothing):
#   $KEEL_STACK_CACHE/<server>/...   downloads and unpacked distributions
#   $KEEL_STACK_DIR/data/<server>/   server data
#   $KEEL_STACK_DIR/logs/<server>.log
#   $KEEL_STACK_DIR/pids/<server>.pid  the pid `down` stops

: "${KEEL_STACK_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/keel/stack}"
: "${KEEL_STACK_DIR:=${XDG_STATE_HOME:-$HOME/.local/state}/keel/stack}"
: "${KEEL_STACK_HOST:=127.0.0.1}"
export KEEL_STACK_CACHE KEEL_STACK_DIR KEEL_STACK_HOST

STACK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export STACK_ROOT

stack_log() { printf '[stack] %s\n' "$*" >&2; }
stack_die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

stack_data_dir() { printf '%s/data/%s' "$KEEL_STACK_DIR" "$1"; }
stack_log_file() { printf '%s/logs/%s.log' "$KEEL_STACK_DIR" "$1"; }
stack_pid_file() { printf '%s/pids/%s.pid' "$KEEL_STACK_DIR" "$1"; }
stack_cache_dir() { printf '%s/%s' "$KEEL_STACK_CACHE" "$1"; }

stack_prepare_dirs() {
  mkdir -p "$KEEL_STACK_CACHE" "$KEEL_STACK_DIR/data" "$KEEL_STACK_DIR/logs" "$KEEL_STACK_DIR/pids"
}

# The pid recorded for a server, if that process is still alive.
stack_pid() {
  local f pid
  f="$(stack_pid_file "$1")"
  [ -f "$f" ] || return 1
  pid="$(cat "$f" 2>/dev/null)"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  printf '%s' "$pid"
}

# Start a long-running foreground command in the background, in its own session,
# with stdout/stderr appended to the server's log and its pid recorded.
#   stack_spawn <server> <command> [args...]
stack_spawn() {
  local name="$1"; shift
  local log pidf
  log="$(stack_log_file "$name")"
  pidf="$(stack_pid_file "$name")"
  printf '\n===== %s: starting %s =====\n' "$(date -u +%FT%TZ)" "$name" >>"$log"
  setsid "$@" >>"$log" 2>&1 </dev/null &
  echo $! >"$pidf"
}

# Stop a pid: TERM, wait up to $2 seconds (default 60), then KILL.
stack_kill_pid() {
  local pid="$1" wait_s="${2:-60}" i=0
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$i" -ge $((wait_s * 5)) ]; then
      stack_log "pid $pid did not stop in ${wait_s}s, killing it"
      kill -KILL "$pid" 2>/dev/null
      break
    fi
    sleep 0.2; i=$((i + 1))
  done
}

# True when a TCP port on the stack host accepts connections.
stack_port_open() {
  (exec 3<>"/dev/tcp/$KEEL_STACK_HOST/$1") 2>/dev/null
}

# True when an HTTP GET answers 2xx.
stack_http_ok() {
  curl -fsS -o /dev/null --max-time 5 "$1" 2>/dev/null
}

# Resolve Maven artifacts and their runtime dependencies into a lib directory.
#   stack_maven_libs <dest-dir> <groupId:artifactId:version>...
# Uses a throwaway pom so the Maven local repository (~/.m2) serves as the cache.
stack_maven_libs() {
  local dest="$1"; shift
  local work deps="" coord g a v
  [ -f "$dest/.complete" ] && return 0
  work="$(mktemp -d)"
  for coord in "$@"; do
    IFS=: read -r g a v <<<"$coord"
    deps="$deps<dependency><groupId>$g</groupId><artifactId>$a</artifactId><version>$v</version></dependency>"
  done
  cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.keel.stack</groupId><artifactId>libs</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>$deps</dependencies>
</project>
POM
  rm -rf "$dest"; mkdir -p "$dest"
  if ! mvn -B -q -f "$work/pom.xml" \
      org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$dest" >"$work/mvn.log" 2>&1; then
    cat "$work/mvn.log" >&2
    rm -rf "$work"
    stack_die "could not resolve $* from the Maven registry"
  fi
  rm -rf "$work"
  touch "$dest/.complete"
}

# Fetch one Maven artifact (any packaging/classifier) to a file.
#   stack_maven_file <groupId:artifactId:version:type[:classifier]> <dest-file>
stack_maven_file() {
  local coord="$1" dest="$2" work
  [ -s "$dest" ] && return 0
  work="$(mktemp -d)"
  mkdir -p "$(dirname "$dest")"
  if ! mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
      -Dartifact="$coord" -DoutputDirectory="$work" -Dmdep.useBaseVersion=true >"$work/mvn.log" 2>&1; then
    cat "$work/mvn.log" >&2
    rm -rf "$work"
    stack_die "could not fetch $coord from the Maven registry"
  fi
  mv "$(find "$work" -maxdepth 1 -type f ! -name mvn.log | head -n1)" "$dest"
  rm -rf "$work"
}

# The Prometheus JMX exporter java agent (io.prometheus.jmx:jmx_prometheus_javaagent) that the
# kafka and connect servers load, serving their MBeans as Prometheus metrics on
# $KEEL_STACK_HOST:<port>/metrics. Fetched once from Maven Central into
# $(stack_cache_dir jmx-exporter)/, checked against the .sha1 file Maven Central publishes next
# to the jar. Its rules are the compose stack's own files, docker/prometheus/jmx-<server>.yml:
# one file per server for both stacks. KEEL_STACK_JMX_EXPORTER=0 starts the servers without it.
: "${KEEL_JMX_EXPORTER_VERSION:=1.0.1}"
: "${KEEL_MAVEN_CENTRAL_URL:=https://repo1.maven.org/maven2}"
: "${KEEL_STACK_JMX_EXPORTER:=1}"
STACK_JMX_RULES_DIR="$(cd "$STACK_ROOT/../docker/prometheus" 2>/dev/null && pwd)"

stack_jmx_exporter_jar() {
  printf '%s/jmx_prometheus_javaagent-%s.jar' "$(stack_cache_dir jmx-exporter)" "$KEEL_JMX_EXPORTER_VERSION"
}

# Idempotent: the jar is downloaded only when missing or when it no longer matches the sha1 it
# was verified against.
stack_jmx_exporter_install() {
  [ "$KEEL_STACK_JMX_EXPORTER" = 0 ] && return 0
  local jar url want got tmp
  jar="$(stack_jmx_exporter_jar)"
  if [ -s "$jar" ] && [ -s "$jar.sha1" ] &&
      [ "$(sha1sum "$jar" | cut -d' ' -f1)" = "$(cat "$jar.sha1")" ]; then
    return 0
  fi
  url="$KEEL_MAVEN_CENTRAL_URL/io/prometheus/jmx/jmx_prometheus_javaagent/$KEEL_JMX_EXPORTER_VERSION/jmx_prometheus_javaagent-$KEEL_JMX_EXPORTER_VERSION.jar"
  mkdir -p "$(dirname "$jar")"
  tmp="$(mktemp "$jar.XXXXXX")" || return 1
  stack_log "jmx-exporter: fetching $url"
  # The .sha1 file holds the hex digest, sometimes followed by the file name.
  if ! want="$(curl -fsSL --retry 3 --max-time 60 "$url.sha1" | tr -d '\r' | cut -d' ' -f1)" ||
      ! [[ "$want" =~ ^[0-9a-f]{40}$ ]]; then
    rm -f "$tmp"
    stack_log "jmx-exporter: no sha1 at $url.sha1"
    return 1
  fi
  if ! curl -fsSL --retry 3 --max-time 300 -o "$tmp" "$url"; then
    rm -f "$tmp"
    stack_log "jmx-exporter: could not download $url"
    return 1
  fi
  got="$(sha1sum "$tmp" | cut -d' ' -f1)"
  if [ "$got" != "$want" ]; then
    rm -f "$tmp"
    stack_log "jmx-exporter: $url has sha1 $got, Maven Central's .sha1 says $want"
    return 1
  fi
  chmod 644 "$tmp"
  printf '%s\n' "$want" >"$jar.sha1"
  mv "$tmp" "$jar"
}

# The JVM option that loads the agent, bound to the stack host only, e.g.
#   -javaagent:<jar>=127.0.0.1:9404:<repo>/docker/prometheus/jmx-connect.yml
# Prints nothing when KEEL_STACK_JMX_EXPORTER=0.
#   stack_jmx_agent_opt <port> <rules-file>
stack_jmx_agent_opt() {
  [ "$KEEL_STACK_JMX_EXPORTER" = 0 ] && return 0
  printf -- '-javaagent:%s=%s:%s:%s' "$(stack_jmx_exporter_jar)" "$KEEL_STACK_HOST" "$1" "$2"
}

# Install Debian packages non-interactively (sudo when not root), waiting for the dpkg lock and
# retrying once after `apt-get update`. A temporary policy-rc.d forbids the packages to start
# their own services: the stack runs its own servers on their ports.
#   stack_apt_install <log-file> <package>...
stack_apt_install() {
  local log="$1"; shift
  local policy=/usr/sbin/policy-rc.d made_policy=0 rc=0 sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  apt_q() {
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=900 \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
  }
  stack_log "apt-get install $* (output in $log)"
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# keel-stack: no service starts while it installs packages\nexit 101\n' |
      "${sudo[@]}" tee "$policy" >/dev/null && "${sudo[@]}" chmod 755 "$policy" && made_policy=1
  fi
  {
    apt_q install --no-install-recommends "$@" ||
      { apt_q update && apt_q install --no-install-recommends "$@"; }
  } >>"$log" 2>&1 || rc=1
  [ "$made_policy" = 1 ] && "${sudo[@]}" rm -f "$policy"
  if [ "$rc" -ne 0 ]; then
    tail -n 20 "$log" >&2
    return 1
  fi
}
