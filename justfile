# Every task people and CI run. `./dev TASK` installs `just` when missing.

set shell := ["bash", "-euo", "pipefail", "-c"]

trace := "crates/decision/examples/spike-then-calm.jsonl"

# List the tasks.
default:
    @just --list

# The main job: the whole scaling flow live on the local stack, about five minutes (docs/demo.md; `just demo --help`).
demo *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    deploy/local/stack up
    eval "$(deploy/local/stack env)"
    # The chart's labels need a font; the demo says so when there is none.
    if [[ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] && command -v apt-get >/dev/null; then
        echo "[demo] installing the Debian package fonts-dejavu-core for the chart's labels" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fonts-dejavu-core >/dev/null 2>&1 || true
    fi
    # RTC_CARGO_PROFILE=release runs the demo (and its load generator) and the
    # stack's pods on release builds.
    source deploy/local/lib.sh
    cargo build --quiet --locked --profile "$RTC_CARGO_PROFILE" -p rtc-demo
    exec "target/$(profile_dir "$RTC_CARGO_PROFILE")/demo" {{ARGS}}

# The same load against the same socket Deployment, scaled by the load-balancer, by an HPA on CPU (50 % and 70 %) and by KEDA: tables and charts (docs/compare.md; `just compare --help`).
compare *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    deploy/local/stack up
    systems="lb,hpa:50,hpa:70"
    # KEDA's operator builds from the module proxy the first time (about 20
    # minutes); without it the comparison runs the HPA alone, and says so.
    if deploy/local/stack up keda; then
        systems="$systems,keda,backup"
    else
        echo "[compare] the KEDA operator could not be started (see above): comparing with the HPA only" >&2
    fi
    eval "$(deploy/local/stack env)"
    if [[ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] && command -v apt-get >/dev/null; then
        echo "[compare] installing the Debian package fonts-dejavu-core for the charts' labels" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fonts-dejavu-core >/dev/null 2>&1 || true
    fi
    cargo build --quiet --locked -p rtc-demo
    RTC_COMPARE_SYSTEMS="$systems" exec target/debug/compare {{ARGS}}

# Replay the bundled sample trace (a spike, then calm) through the decision core and print the timeline.
replay:
    cargo run --quiet --release -p rtc-load-balancer -- decide --format timeline {{trace}}

# Replay JSON lines through the decision core (see `load-balancer decide --help`).
decide *ARGS:
    cargo run --quiet --release -p rtc-load-balancer -- decide {{ARGS}}

# Regenerate the sample trace from the simulator.
trace:
    cargo run --quiet -p rtc-decision --example simulate > {{trace}}

# The whole test suite: starts the local stack (with Prometheus and kafka-exporter), runs every test, then the relay's server tests on Apache Kafka, stops the stack whatever the outcome.
test: check-decision-deps check-decision-publish check-relay-core check-dashboard
    #!/usr/bin/env bash
    set -euo pipefail
    trap 'deploy/local/stack down' EXIT
    deploy/local/stack up
    # The monitoring check (bins/loadgen/tests/monitoring.rs) needs these.
    deploy/local/stack up prometheus kafka-exporter
    eval "$(deploy/local/stack env)"
    cargo test --workspace --locked
    # The relay against real servers once more, on the stack's other broker
    # (Apache Kafka in place of tansu, on the same address).
    deploy/local/stack down kafka
    RTC_KAFKA_BROKER=apache deploy/local/stack up kafka
    cargo test --locked -p rtc-relay --test servers

# Unit, property and doc tests, and the offline manifest and overlay checks (no servers needed; kubectl for the overlays).
test-offline:
    cargo test --workspace --locked --lib --bins
    cargo test --workspace --locked --doc
    cargo test --locked -p rtc-decision --tests
    cargo test --locked -p rtc-load-balancer --test keda_backup
    cargo test --locked -p rtc-load-balancer --test manifests -- every_configured_key every_key_an_overlay the_local_overlay

# Fail if the decision core has any async, networking or Kubernetes crate under it.
check-decision-deps:
    #!/usr/bin/env bash
    set -euo pipefail
    banned='^(tokio|mio|kube|kube-client|kube-core|fred|rskafka|hyper|reqwest|axum|tonic|async-std|futures|socket2|k8s-openapi)$'
    deps="$(cargo tree --locked -p rtc-decision -e normal,build --prefix none --format '{p}' | awk '{print $1}' | sort -u)"
    if bad="$(grep -E "$banned" <<<"$deps")"; then
        echo "rtc-decision must stay free of I/O and async, but depends on:" >&2
        echo "$bad" >&2
        exit 1
    fi
    echo "rtc-decision dependencies are pure: $(tr '\n' ' ' <<<"$deps")"

# The decision crate as other teams get it: it packages and builds from its
# package alone (`cargo publish --dry-run`), and its docs build without a warning.
check-decision-publish:
    cargo publish --dry-run --locked --allow-dirty --quiet -p rtc-decision
    RUSTDOCFLAGS="-D warnings" cargo doc --locked --quiet -p rtc-decision --no-deps

# Fail if the relay's sans-I/O core (a module of rtc-relay, so `cargo tree` cannot see it) uses async, networking or a clock.
check-relay-core:
    #!/usr/bin/env bash
    set -euo pipefail
    banned='(tokio|fred|rskafka|axum|futures|kafka_protocol|std::net|std::time::(Instant|SystemTime)|SystemTime|Instant::now)'
    if bad="$(grep -rnE "$banned" crates/relay/src/core)"; then
        echo "the relay core must stay free of I/O, async and clocks, but has:" >&2
        echo "$bad" >&2
        exit 1
    fi
    echo "the relay core is pure"

# Type-check the Grafana dashboard JSON against Grafana's published dashboard schema (@grafana/schema from npm; Grafana itself is not run).
check-dashboard:
    cd deploy/grafana/check && npm ci --silent --no-audit --no-fund && node check.mjs

# Formatting check.
fmt-check:
    cargo fmt --all --check

# Lints, warnings as errors.
clippy:
    cargo clippy --workspace --all-targets --locked -- -D warnings

# Benchmarks of the decision core (criterion; report in target/criterion).
bench:
    cargo bench -p rtc-decision --bench decide

# The load-balancer on the local stack with default timings: heartbeat-to-/scale reaction, and CPU and memory with 1 000 live nodes (about 3 minutes).
bench-loop:
    #!/usr/bin/env bash
    set -euo pipefail
    deploy/local/stack up
    eval "$(deploy/local/stack env)"
    cargo bench -p rtc-load-balancer --bench loop

# Socket node against a Node.js `ws` relay in the same run: idle memory, relay throughput and latency, drain of 10 000 (about 3 minutes; needs npm).
bench-socket *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    deploy/local/stack up redis kafka
    eval "$(deploy/local/stack env redis kafka)"
    cargo bench -p rtc-socket-node --bench relay -- {{ARGS}}

# Heartbeat ingestion benchmark: 10 000 simulated nodes against the stack's Redis (about 90 s).
bench-heartbeat:
    #!/usr/bin/env bash
    set -euo pipefail
    deploy/local/stack up redis
    eval "$(deploy/local/stack env redis)"
    cargo bench -p rtc-heartbeat --bench ingest

# The load generator (docs/loadgen.md): WebSocket clients on the Ready socket pods, exact loss and duplicate counts (`just loadgen --help`).
loadgen *ARGS:
    cargo run --quiet --release -p rtc-loadgen -- {{ARGS}}

# The load generator's own ceiling: connections and msg/s one process drives against two socket pods on the local stack (about 4 minutes).
bench-loadgen:
    #!/usr/bin/env bash
    set -euo pipefail
    deploy/local/stack up
    eval "$(deploy/local/stack env)"
    cargo bench -p rtc-loadgen --bench ceiling

# Build the container images rtc/load-balancer and rtc/socket-node (OCI, with buildah; no Docker daemon, no registry; docs/images.md).
images:
    deploy/images/build.sh

# Start each built image once and ask its /healthz (needs the stack's redis, kafka and apiserver).
images-smoke:
    deploy/images/smoke.sh

# Start the local stack (Redis, a Kafka-protocol broker, toxiproxy, etcd, the Kubernetes control plane and node agents).
stack-up *SERVICES:
    deploy/local/stack up {{SERVICES}}

# Stop the local stack.
stack-down *SERVICES:
    deploy/local/stack down {{SERVICES}}

# Show the local stack's services, pids, ports and logs.
stack-status:
    deploy/local/stack status

# Print shell exports for the local stack (eval "$(just stack-env)").
stack-env:
    @deploy/local/stack env

# What CI runs: format, lints, then the whole test suite.
ci: fmt-check clippy test
