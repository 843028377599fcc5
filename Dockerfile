# syntax=docker/dockerfile:1
#
# cable-gateway container image.
#   docker build -t cable-gateway .
#   docker run --rm -e DATABASE_URL=postgres://... cable-gateway migrate
#   docker run --rm -p 8080:8080 -e DATABASE_URL=postgres://... cable-gateway      # serve
# docker-compose.yml wires it to PostgreSQL.

# --- build -------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# The whole context (see .dockerignore): migrations/ are embedded at compile time
# (sqlx::migrate!), and Cargo needs every target the manifest names.
COPY . .
# Cache mounts keep the registry and incremental build across image builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin cable-gateway \
 && install -m 0755 target/release/cable-gateway /usr/local/bin/cable-gateway

# --- runtime -----------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin cable
COPY --from=builder /usr/local/bin/cable-gateway /usr/local/bin/cable-gateway
ENV CABLE_LISTEN=0.0.0.0:8080
EXPOSE 8080
USER cable
# SIGTERM (docker stop): the gateway tells clients to reconnect and exits within 10 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["cable-gateway"]
CMD ["serve"]
