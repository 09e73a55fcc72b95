# syntax=docker/dockerfile:1.7
# One image per service: docker build --build-arg SERVICE=catalog -t ticketflow/catalog .
# SERVICE is one of: gateway identity catalog ordering notifications (or ticketflow, the all-in-one launcher).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version ^0.1
WORKDIR /src

# Dependency recipe: changes only when Cargo.toml/Cargo.lock change, so the layer below is cached.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
ARG SERVICE
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
RUN test -n "$SERVICE" && cargo build --release --locked --bin "$SERVICE" \
    && cp "target/release/$SERVICE" /usr/local/bin/service

FROM debian:bookworm-slim AS runtime
# curl only for HEALTHCHECK; ca-certificates for TLS to managed Postgres/Redis/RabbitMQ.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home ticketflow
COPY --from=builder /usr/local/bin/service /usr/local/bin/service
USER 10001
ENV LOG_FORMAT=json
# Every service answers /alive on its HTTP port; HEALTH_PORT says which (see compose.yaml).
ENV HEALTH_PORT=8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${HEALTH_PORT}/alive" || exit 1
ENTRYPOINT ["/usr/local/bin/service"]
