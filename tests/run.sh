#!/usr/bin/env bash
# The whole test suite, from a fresh machine: formatting, lints, unit and property tests, and the
# black-box tests that start the real binary on loopback. Installs what the tests need itself.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real MQTT clients for the broker tests (Debian's mosquitto-clients).
command -v mosquitto_sub >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto-clients
}
# A real NATS server with JetStream for the replication tests (Debian's nats-server).
[[ -x /usr/sbin/nats-server ]] || command -v nats-server >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server
}
# nftables, for the replication test's silent partition (Debian's nftables).
[[ -x /usr/sbin/nft ]] || command -v nft >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables
}
# The strict OpenAPI validator the OpenAPI test runs (PyPI).
python3 -c 'import openapi_spec_validator' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check 'openapi-spec-validator>=0.7,<1'
# paho-mqtt, a real MQTT client for the broker tests (PyPI).
python3 -c 'import paho.mqtt' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check 'paho-mqtt>=2,<3'

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The black-box tests start the binary from the target directory.
cargo build -p tessera-runtime --bin tessera
cargo test --workspace
