# syntax=docker/dockerfile:1
#
# drainproxy container image: the proxy and the bundled demo upstream.
#
#   docker build -t ghcr.io/example/drainproxy:latest .
#   docker run --rm -p 8080:8080 ghcr.io/example/drainproxy:latest --upstream app:3000
#   (the demo app: --entrypoint /usr/local/bin/demo-upstream ... --listen 0.0.0.0:3000)
#
# deploy/compose/docker-compose.yml runs both; deploy/kubernetes/ has the sidecar manifests.
# No HEALTHCHECK here: Kubernetes ignores it and uses the probes, compose sets its
# own (`drainproxy health`), and a fixed one would fail whenever --admin is moved.
#
# Stage 1 builds both binaries from the locked dependency set; stage 2 is
# distroless (glibc and libgcc, no shell, no package manager) and runs as a
# non-root user. Because there is no shell, Kubernetes preStop hooks call
# `drainproxy drain ...` directly (see deploy/kubernetes/native-sidecar.yaml).
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.

# Debian 12 (bookworm) in both stages, so the binaries link against the same glibc.
FROM rust:1-bookworm AS builder
WORKDIR /src
# Only what `cargo build` reads: edits to tests, docs or deploy/ do not bust this layer.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The crate registry and target/ are cache mounts, so a source change rebuilds
# only this crate and never re-downloads or recompiles the dependencies.
# target/ is not part of the image, hence the binaries are copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && install -D -m 0755 -t /out target/release/drainproxy target/release/demo-upstream

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/drainproxy /out/demo-upstream /usr/local/bin/
# Kubelet probes and `docker run -p` reach the admin port from outside the
# container, so it listens on all interfaces here (the binary's default is
# loopback). POST /drain still answers only loopback peers, which a preStop
# exec inside the pod is; everything else on the admin port is read-only.
ENV DRAINPROXY_ADMIN=0.0.0.0:9901
# Numeric, so that Kubernetes' runAsNonRoot can verify it (65532 is distroless' "nonroot").
USER 65532:65532
# 8080: client-facing proxy (--listen default); 9901: admin (health, readiness, metrics).
EXPOSE 8080 9901
# The signal that starts the drain (this is Docker's default; stated for the record).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/drainproxy"]
