# Keel's image for docker-compose.yml (the psp-mock service; `keel run` too, with its config
# pointed at the compose hosts). Built from the repository root:
#   docker build -f docker/keel.Dockerfile -t keel:latest .
# No Docker engine runs on Keel's CI machines: this file is checked by tests/tests/compose.rs
# (the service names it), not built there.
FROM rust:1.95-bookworm AS build
# librocksdb-sys builds RocksDB's C++ itself here (scripts/rocksdb's prebuilt cache is a host
# optimisation); bindgen needs libclang.
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libclang-dev cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin keel

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/keel /usr/local/bin/keel
# The defaults are compiled in (config/default.toml); KEEL__* variables or KEEL_CONFIG layer on top.
CMD ["keel", "--help"]
