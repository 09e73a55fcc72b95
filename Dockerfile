# syntax=docker/dockerfile:1.7
# One image per service: docker build --build-arg SERVICE=catalog -t ticketflow/catalog .
# SERVICE is one of: gateway identity catalog ordering notifications (or ticketflow, the all-in-one launcher).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# Dependency recipe: changes only when Cargo.toml/Cargo.lock change, so the layer below is cached.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Every workspace dependency, built once: SERVICE is declared only below, so all five images share
# this layer instead of each rebuilding the same crates.
RUN cargo chef cook --release --locked --recipe-path recipe.json
# The whole context: sources, proto/, gateway/assets/ and migrations/ (sqlx::migrate! embeds them at
# compile time, so the image carries no .sql files).
COPY . .
ARG SERVICE
RUN test -n "$SERVICE" || { echo "build with --build-arg SERVICE=<service>" >&2; exit 1; }; \
    cargo build --release --locked --bin "$SERVICE" \
    && cp "target/release/$SERVICE" /usr/local/bin/service

FROM debian:bookworm-slim AS runtime
# curl only for HEALTHCHECK; ca-certificates for TLS to managed Postgres/Redis/RabbitMQ. Unpinned: a
# bookworm point release removes the old versions from the mirrors, so pins would break the build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home ticketflow
# Declared after the layer above so all five images share it.
ARG SERVICE
# The port each service answers /alive on by default (its LISTEN_ADDR default; the launcher's is the
# gateway's). tests/integration/tests/deployment.rs checks these against the services' configs.
RUN mkdir -p /etc/ticketflow && case "$SERVICE" in \
        gateway) port=8080 ;; \
        identity) port=8081 ;; \
        ordering) port=8082 ;; \
        catalog) port=8083 ;; \
        notifications) port=8084 ;; \
        ticketflow) port=8080 ;; \
        *) echo "unknown SERVICE '$SERVICE'" >&2; exit 1 ;; \
    esac && echo "$port" > /etc/ticketflow/health-port
COPY --from=builder /usr/local/bin/service /usr/local/bin/service
USER 10001
ENV LOG_FORMAT=json
# The probed port: HEALTH_PORT if set, else the port of LISTEN_ADDR if set (so moving a service to
# another port moves its health check with it), else the service's default from above.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/bin/sh", "-c", "port=${HEALTH_PORT:-${LISTEN_ADDR##*:}}; curl -fsS -o /dev/null http://127.0.0.1:${port:-$(cat /etc/ticketflow/health-port)}/alive || exit 1"]
ENTRYPOINT ["/usr/local/bin/service"]
