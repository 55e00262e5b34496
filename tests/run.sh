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
# nftables, for the replication tests' partitions and packet loss (Debian's nftables); iproute2
# (ip netns, veth, tc tbf) and libfaketime (a node's clock ahead) for the fault harness.
[[ -x /usr/sbin/nft ]] || command -v nft >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables
}
{ command -v ip >/dev/null && command -v tc >/dev/null \
  && [[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]]; } || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 faketime
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
