# shellcheck shell=bash
# MariaDB (Debian package; stands in for MySQL) on 127.0.0.1:3306, for Keel and Debezium CDC.
#
# - Installs mariadb-server + mariadb-client with apt if missing, without letting the package
#   start (or keep enabled) Debian's own system-wide mariadb service.
# - Runs /usr/sbin/mariadbd in the foreground from its own data dir, config
#   stack/conf/mariadb/my.cnf (Debian's /etc/mysql is not read):
#     $(stack_data_dir mariadb)/data   datadir (binlogs keel-bin.* live here too)
#     $(stack_data_dir mariadb)/run    unix socket (mysqld.sock) and pid file
# - Database `keel` and user keel/keel are created at initialisation and re-applied after every
#   up (stack/conf/mariadb/setup.sql): keel@'%', @'localhost', @'127.0.0.1' with ALL on keel.* plus the global privileges Debezium needs (SELECT, RELOAD, SHOW DATABASES,
#   REPLICATION SLAVE, BINLOG MONITOR = REPLICATION CLIENT, REPLICA MONITOR, LOCK TABLES), so one
#   user serves both the app and the CDC connector.
# - Superuser: root@localhost through the unix socket only (unix_socket auth; no TCP root).
#   As a non-root OS user, that account is <your user>@localhost instead.
#
# shellcheck disable=SC2034  # variables read by keel-stack
mariadb_PORTS="3306"
# keel-stack's clock starts before <name>_install, so this covers a first apt-get install too.
mariadb_TIMEOUT=300

mariadb_datadir() { printf '%s/data' "$(stack_data_dir mariadb)"; }
mariadb_rundir() { printf '%s/run' "$(stack_data_dir mariadb)"; }
mariadb_socket() { printf '%s/mysqld.sock' "$(mariadb_rundir)"; }
mariadb_conf() { printf '%s/conf/mariadb/my.cnf' "$STACK_ROOT"; }
# The OS user mariadbd runs as, which is also the name of the socket-authenticated superuser.
mariadb_os_user() { id -un; }

mariadb_packages_installed() {
  local p
  for p in mariadb-server mariadb-client; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
  done
  [ -x /usr/sbin/mariadbd ] && command -v mariadb-install-db >/dev/null && command -v mariadb-admin >/dev/null
}

# Install the packages with a policy-rc.d that forbids service starts, then make sure Debian's
# own service is neither running nor enabled: the stack's server owns port 3306.
mariadb_apt_install() {
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  local log; log="$(stack_log_file mariadb)"
  stack_apt_install "$log" mariadb-server mariadb-client || return 1
  # Debian's instance (datadir /var/lib/mysql): stop it if something started it, and disable it.
  if [ -d /run/systemd/system ]; then
    "${sudo[@]}" systemctl disable --now mariadb.service >>"$log" 2>&1 || true
  else
    local dpid
    dpid="$(cat /run/mysqld/mysqld.pid 2>/dev/null)"
    if [ -n "$dpid" ] && kill -0 "$dpid" 2>/dev/null; then
      "${sudo[@]}" /etc/init.d/mariadb stop >>"$log" 2>&1 || stack_kill_pid "$dpid" 60
    fi
    command -v update-rc.d >/dev/null && "${sudo[@]}" update-rc.d mariadb disable >>"$log" 2>&1
  fi
  return 0
}

mariadb_install() {
  mariadb_packages_installed || mariadb_apt_install || return 1
  mariadb_packages_installed || { stack_log "mariadb: packages still missing after apt-get"; return 1; }
  local base datadir tmp
  base="$(stack_data_dir mariadb)"
  datadir="$(mariadb_datadir)"
  mkdir -p "$base" "$(mariadb_rundir)"
  [ -d "$datadir/mysql" ] && return 0
  # First run: initialise into a scratch dir and move it into place only when complete.
  tmp="$base/data.init"
  rm -rf "$tmp"
  stack_log "mariadb: initialising $datadir"
  if ! mariadb-install-db --defaults-file="$(mariadb_conf)" --datadir="$tmp" \
      --user="$(mariadb_os_user)" --skip-test-db --extra-file="$STACK_ROOT/conf/mariadb/setup.sql" \
      >>"$(stack_log_file mariadb)" 2>&1; then
    tail -n 20 "$(stack_log_file mariadb)" >&2
    rm -rf "$tmp"
    return 1
  fi
  rm -rf "$datadir"
  mv "$tmp" "$datadir"
}

mariadb_start() {
  local user=()
  # mariadbd refuses to run as root unless told to; it never runs as a user other than ours.
  [ "$(id -u)" -eq 0 ] && user=(--user=root)
  # --defaults-file must come first.
  stack_spawn mariadb /usr/sbin/mariadbd --defaults-file="$(mariadb_conf)" \
    --datadir="$(mariadb_datadir)" --socket="$(mariadb_socket)" \
    --pid-file="$(mariadb_rundir)/mariadbd.pid" "${user[@]}"
}

# `mariadb-admin ping` exits 0 once the server answers, even with "access denied"; but a host
# with no account at all (1130) fails, hence the keel user is created at initialisation.
# Logging in as keel keeps "access denied" warnings out of the server log.
mariadb_healthy() {
  mariadb-admin --no-defaults --protocol=TCP -h"$KEEL_STACK_HOST" -P3306 -ukeel -pkeel \
    --connect-timeout=2 ping >/dev/null 2>&1
}

# Superuser SQL over the unix socket.
mariadb_sql() {
  mariadb --no-defaults --protocol=SOCKET -S "$(mariadb_socket)" -u"$(mariadb_os_user)" \
    --batch --skip-column-names "$@"
}

# Re-applies the init-time setup (idempotent; restores the keel user if it was changed).
mariadb_after_up() {
  mariadb_sql <"$STACK_ROOT/conf/mariadb/setup.sql" >>"$(stack_log_file mariadb)" 2>&1 ||
    { tail -n 5 "$(stack_log_file mariadb)" >&2; return 1; }
}
