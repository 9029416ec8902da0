-- Idempotent setup for the local Keel stack's MariaDB. Run once at initialisation
-- (mariadb-install-db --extra-file) and again after every `keel-stack up` (mariadb_after_up).
--
-- One user, keel/keel, serves both the application (ALL on keel.*) and the Debezium
-- connector (global SELECT, RELOAD, SHOW DATABASES, REPLICATION SLAVE, BINLOG MONITOR, which
-- MariaDB also calls REPLICATION CLIENT, REPLICA MONITOR for SHOW SLAVE STATUS, LOCK TABLES).
-- Three hosts: '%' for TCP, '127.0.0.1' explicitly, 'localhost' for the unix socket.
-- Not written to the binlog, so a CDC connector never sees it.
SET SESSION sql_log_bin = 0;
-- In bootstrap mode (mariadb-install-db) this loads the grant tables so CREATE USER works.
FLUSH PRIVILEGES;

CREATE DATABASE IF NOT EXISTS `keel` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci;

CREATE USER IF NOT EXISTS 'keel'@'%' IDENTIFIED BY 'keel';
CREATE USER IF NOT EXISTS 'keel'@'127.0.0.1' IDENTIFIED BY 'keel';
CREATE USER IF NOT EXISTS 'keel'@'localhost' IDENTIFIED BY 'keel';
ALTER USER 'keel'@'%' IDENTIFIED BY 'keel';
ALTER USER 'keel'@'127.0.0.1' IDENTIFIED BY 'keel';
ALTER USER 'keel'@'localhost' IDENTIFIED BY 'keel';

GRANT ALL PRIVILEGES ON `keel`.* TO 'keel'@'%', 'keel'@'127.0.0.1', 'keel'@'localhost';
-- Tests create (and drop) their own databases named keel_<something>, e.g. keel_test_3f9a...
-- (`\_` is a literal underscore in a grant's database pattern).
GRANT ALL PRIVILEGES ON `keel\_%`.* TO 'keel'@'%', 'keel'@'127.0.0.1', 'keel'@'localhost';
GRANT SELECT, RELOAD, SHOW DATABASES, REPLICATION SLAVE, BINLOG MONITOR, REPLICA MONITOR, LOCK TABLES
  ON *.* TO 'keel'@'%', 'keel'@'127.0.0.1', 'keel'@'localhost';
