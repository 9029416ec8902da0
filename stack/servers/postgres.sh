# shellcheck shell=bash
# PostgreSQL (Debian package, 15 on bookworm) on 127.0.0.1:5432, for Keel and Debezium CDC.
#
# - Installs `postgresql` with apt if no server is installed, without letting the package start
#   (or keep enabled) Debian's own cluster (15/main on /var/lib/postgresql): we own port 5432.
# - Runs /usr/lib/postgresql/<ver>/bin/postgres (the postmaster, in the foreground) from its own
#   data dir, as the `postgres` OS user (PostgreSQL refuses to run as root):
#     $(stack_data_dir postgres)/pgdata   PGDATA (initdb'd once; <ver> is read from PG_VERSION)
#     $(stack_data_dir postgres)/run      unix socket directory
#   Settings: stack/conf/postgres/keel-stack.conf and pg_hba.conf, copied into PGDATA at every
#   start (wal_level=logical, replication slots/senders, listen 127.0.0.1 only).
# - `setpriv` switches user and execs (no fork), so the recorded pid is the postmaster's. When
#   the postgres user cannot traverse $KEEL_STACK_DIR (the default lives under /root, mode 0700)
#   the server gets one extra capability, CAP_DAC_READ_SEARCH, to reach its data dir.
# - After it is up: role keel/keel (LOGIN REPLICATION CREATEDB), database keel owned by keel, and
#   publication dbz_publication FOR ALL TABLES in keel (for Debezium with
#   publication.autocreate.mode=disabled, plugin.name=pgoutput). Superuser: `postgres`, through
#   the unix socket only (trust; the socket is mode 0700, so only root and postgres reach it).
#
# shellcheck disable=SC2034  # variables read by keel-stack
postgres_PORTS="5432"
# keel-stack's clock starts before <name>_install, so this covers a first apt-get install too.
postgres_TIMEOUT=300

postgres_pgdata() { printf '%s/pgdata' "$(stack_data_dir postgres)"; }
postgres_rundir() { printf '%s/run' "$(stack_data_dir postgres)"; }

# The major version to run: the data dir's if initialised, else the newest installed.
postgres_version() {
  local f
  f="$(postgres_pgdata)/PG_VERSION"
  if [ -f "$f" ]; then cat "$f"; return 0; fi
  postgres_installed_versions | tail -n 1
}
postgres_installed_versions() {
  local b
  for b in /usr/lib/postgresql/*/bin/postgres; do
    [ -x "$b" ] && basename "$(dirname "$(dirname "$b")")"
  done | sort -V
}
postgres_bindir() { printf '/usr/lib/postgresql/%s/bin' "$(postgres_version)"; }

# As root, the server runs as `postgres`; otherwise as whoever runs the stack.
postgres_chown() { [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$@"; }

# Sets POSTGRES_AS to the argv prefix that runs a command as the server's OS user. Every piece
# execs, so the command keeps the pid `stack_spawn` records.
postgres_as_prefix() {
  POSTGRES_AS=()
  [ "$(id -u)" -eq 0 ] || return 0
  local sp=(setpriv --reuid=postgres --regid=postgres --init-groups)
  POSTGRES_AS=(env -i PATH=/usr/bin:/bin LANG=C.UTF-8 HOME=/var/lib/postgresql
    USER=postgres LOGNAME=postgres "${sp[@]}")
  if ! "${sp[@]}" test -x "$(stack_data_dir postgres)" 2>/dev/null; then
    POSTGRES_AS+=(--inh-caps=+dac_read_search --ambient-caps=+dac_read_search)
  fi
}

postgres_installed() {
  local v
  v="$(postgres_installed_versions | tail -n 1)"
  [ -n "$v" ] || return 1
  local b="/usr/lib/postgresql/$v/bin"
  [ -x "$b/initdb" ] && [ -x "$b/pg_isready" ] && [ -x "$b/psql" ]
}

# Install with a policy-rc.d that forbids service starts, then make sure the clusters the
# package created are neither running nor started at boot.
postgres_apt_install() {
  local log sudo=() before f
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  log="$(stack_log_file postgres)"
  before="$(ls /etc/postgresql/*/*/start.conf 2>/dev/null)"
  stack_apt_install "$log" postgresql || return 1
  {
    if [ -d /run/systemd/system ]; then
      "${sudo[@]}" systemctl disable --now postgresql.service
      "${sudo[@]}" systemctl stop 'postgresql@*.service'
    else
      # pg_lsclusters -h: version cluster port status owner datadir log
      pg_lsclusters -h 2>/dev/null | while read -r ver name _ status _; do
        [ "$status" = online ] && "${sudo[@]}" pg_ctlcluster "$ver" "$name" stop
      done
      command -v update-rc.d >/dev/null && "${sudo[@]}" update-rc.d postgresql disable
    fi
    # Clusters created by this install (e.g. 15/main) start only by hand from now on.
    for f in /etc/postgresql/*/*/start.conf; do
      [ -f "$f" ] || continue
      printf '%s\n' "$before" | grep -qxF "$f" && continue
      echo manual | "${sudo[@]}" tee "$f" >/dev/null
    done
  } >>"$log" 2>&1
  return 0
}

postgres_install() {
  postgres_installed || postgres_apt_install || return 1
  postgres_installed || { stack_log "postgres: no PostgreSQL server installed after apt-get"; return 1; }
  local v bin base pgdata tmp log
  v="$(postgres_version)"
  bin="/usr/lib/postgresql/$v/bin"
  base="$(stack_data_dir postgres)"
  pgdata="$(postgres_pgdata)"
  log="$(stack_log_file postgres)"
  if [ ! -x "$bin/postgres" ]; then
    stack_log "postgres: $pgdata is a PostgreSQL $v data dir but $v is not installed" \
      "(installed: $(postgres_installed_versions | tr '\n' ' ')); install postgresql-$v or remove it"
    return 1
  fi
  [ "$(id -u)" -ne 0 ] || id postgres >/dev/null 2>&1 || { stack_log "postgres: no 'postgres' OS user"; return 1; }
  mkdir -p "$base" "$(postgres_rundir)"
  chmod 0700 "$base" "$(postgres_rundir)"
  postgres_chown "$base" "$(postgres_rundir)"
  [ -f "$pgdata/PG_VERSION" ] && return 0
  # First run: initdb into a scratch dir, move it into place only when complete.
  tmp="$base/pgdata.init"
  rm -rf "$tmp"
  stack_log "postgres: initialising $pgdata (PostgreSQL $v)"
  postgres_as_prefix
  if ! "${POSTGRES_AS[@]}" "$bin/initdb" -D "$tmp" -U postgres --encoding=UTF8 --locale=C.UTF-8 \
      --auth-local=trust --auth-host=scram-sha-256 >>"$log" 2>&1; then
    tail -n 20 "$log" >&2
    rm -rf "$tmp"
    return 1
  fi
  printf "\n# Keel stack settings: stack/conf/postgres/keel-stack.conf, copied here at every start.\ninclude_if_exists = 'keel-stack.conf'\n" \
    >>"$tmp/postgresql.conf"
  rm -rf "$pgdata"
  mv "$tmp" "$pgdata"
}

# A lock file whose pid now belongs to some other process (pid reuse after a crash or a
# container restart) makes the postmaster refuse to start: drop it. A live postgres keeps it.
postgres_drop_stale_lock() {
  local f="$1" pid
  [ -f "$f" ] || return 0
  pid="$(head -n 1 "$f" 2>/dev/null)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ]; then
    return 0
  fi
  rm -f "$f"
}

postgres_start() {
  local pgdata rundir own=()
  pgdata="$(postgres_pgdata)"
  rundir="$(postgres_rundir)"
  [ "$(id -u)" -ne 0 ] || own=(-o postgres -g postgres)
  install -m 0600 "${own[@]}" "$STACK_ROOT/conf/postgres/keel-stack.conf" "$pgdata/keel-stack.conf" || return 1
  install -m 0600 "${own[@]}" "$STACK_ROOT/conf/postgres/pg_hba.conf" "$pgdata/pg_hba.conf" || return 1
  postgres_drop_stale_lock "$pgdata/postmaster.pid"
  postgres_drop_stale_lock "$rundir/.s.PGSQL.5432.lock"
  postgres_as_prefix
  stack_spawn postgres "${POSTGRES_AS[@]}" "$(postgres_bindir)/postgres" -D "$pgdata" -k "$rundir"
}

postgres_healthy() {
  "$(postgres_bindir)/pg_isready" -q -h "$KEEL_STACK_HOST" -p 5432 -t 2 -U postgres -d postgres 2>/dev/null
}

# Fast shutdown (SIGINT: disconnect clients, checkpoint); SIGTERM would wait for every client,
# e.g. an idle Debezium connection, to leave. Then immediate shutdown, then KILL.
postgres_stop() {
  local pid="$1" i=0
  kill -INT "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$i" -eq 300 ]; then
      stack_log "postgres: pid $pid still up after 60s, immediate shutdown"
      kill -QUIT "$pid" 2>/dev/null
    elif [ "$i" -ge 350 ]; then
      stack_log "postgres: pid $pid did not stop, killing it"
      kill -KILL "$pid" 2>/dev/null
      break
    fi
    sleep 0.2; i=$((i + 1))
  done
}

# Superuser SQL over the unix socket.
postgres_psql() {
  "$(postgres_bindir)/psql" -X -q -v ON_ERROR_STOP=1 -h "$(postgres_rundir)" -p 5432 -U postgres "$@"
}

postgres_after_up() {
  local log
  log="$(stack_log_file postgres)"
  {
    postgres_psql -d postgres <<'SQL' &&
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'keel') THEN
    CREATE ROLE keel LOGIN REPLICATION CREATEDB PASSWORD 'keel';
  ELSE
    ALTER ROLE keel LOGIN REPLICATION CREATEDB PASSWORD 'keel';
  END IF;
END
$$;
SELECT 'CREATE DATABASE keel OWNER keel'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'keel') \gexec
SQL
    postgres_psql -d keel <<'SQL'
SELECT 'CREATE PUBLICATION dbz_publication FOR ALL TABLES'
 WHERE NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'dbz_publication') \gexec
SQL
  } >>"$log" 2>&1 || { tail -n 5 "$log" >&2; return 1; }
}
