//! Integration tests of `keel-state` against real RocksDB instances in temp directories.
//! One test binary (RocksDB links once); one module per concern.

mod common;
mod kv;
mod memory;
mod model;
mod task;
mod timers;
mod ttl;
