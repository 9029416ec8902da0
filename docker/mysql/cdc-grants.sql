-- The `keel` user also reads the binlog for Debezium, as in the local stack.
GRANT SELECT, RELOAD, SHOW DATABASES, REPLICATION SLAVE, REPLICATION CLIENT, LOCK TABLES ON *.* TO 'keel'@'%';
FLUSH PRIVILEGES;
