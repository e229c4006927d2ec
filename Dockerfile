# Parley — one image holding every binary; compose.yaml picks the command per service:
#   /usr/local/bin/parley-gateway               HTTP + Socket.IO on PARLEY_LISTEN
#   /usr/local/bin/parley-persistence-worker    admin HTTP on PARLEY_ADMIN_LISTEN
#   /usr/local/bin/parley-notification-worker   admin HTTP on PARLEY_ADMIN_LISTEN
#   /usr/local/bin/parley                       the operator's CLI
#
#   docker build -t parley .
#   docker run --rm -e PARLEY_JWT_SECRET=… -e PARLEY_TRANSCRIPT_KEY=… -e NATS_URL=… -e DATABASE_URL=… parley   # gateway
#   docker run --rm -e NATS_URL=… -e DATABASE_URL=… parley parley-persistence-worker
#
# Stages: `planner` reduces the source tree to the workspace skeleton (manifests, lock file,
# empty target stubs); `builder` compiles the dependencies against that skeleton in a layer
# that is reused until a Cargo.toml or Cargo.lock changes, then builds the real sources;
# `runtime` is debian-slim with the binaries, running as an unprivileged user.
#
# What the compile needs besides libs/ and services/: `.sqlx/` (sqlx's compile-time query data,
# used with SQLX_OFFLINE=true: no database during the build), `migrations/` (embedded by
# `sqlx::migrate!` in libs/store) and `nats/` (stream and consumer JSON embedded by
# `include_str!` in libs/nats). A new top-level folder read at compile time needs a COPY below.
# The runtime image needs none of them: everything is compiled into the binaries.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------- planner
FROM ${RUST_IMAGE} AS planner
WORKDIR /src
COPY . .
RUN sh deploy/cargo-skeleton.sh /src /skeleton

# ---------------------------------------------------------------- builder
FROM ${RUST_IMAGE} AS builder
WORKDIR /app
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0

# 1. Dependencies only: cached until a manifest or the lock file changes.
COPY --from=planner /skeleton/ ./
RUN cargo build --release --locked \
      --bin parley-gateway \
      --bin parley-persistence-worker \
      --bin parley-notification-worker \
      --bin parley

# 2. The real sources, over the stubs. COPY keeps the files' own modification times, which can
#    be older than the stubs just compiled: touch them so cargo rebuilds every workspace crate.
COPY .sqlx ./.sqlx
COPY migrations ./migrations
COPY nats ./nats
COPY libs ./libs
COPY services ./services
RUN find libs services -name '*.rs' -exec touch {} + \
 && cargo build --release --locked \
      --bin parley-gateway \
      --bin parley-persistence-worker \
      --bin parley-notification-worker \
      --bin parley \
 && mkdir -p /out \
 && cp target/release/parley-gateway \
       target/release/parley-persistence-worker \
       target/release/parley-notification-worker \
       target/release/parley \
       /out/

# ---------------------------------------------------------------- runtime
FROM ${RUNTIME_IMAGE} AS runtime
# ca-certificates: TLS to NATS (tls://) and SMTP. curl: compose's health checks
# (`curl -fsS http://127.0.0.1:<port>/healthz`); nothing else uses it.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 parley \
 && useradd --system --uid 10001 --gid parley --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin parley
COPY --from=builder /out/ /usr/local/bin/
# Numeric, so orchestrators can verify "not root" without reading /etc/passwd.
USER 10001:10001
WORKDIR /
# 8080: the gateway (PARLEY_LISTEN); 9100: a worker's admin endpoint (PARLEY_ADMIN_LISTEN).
EXPOSE 8080 9100
# Every process stops gracefully on SIGTERM (the default stop signal).
CMD ["parley-gateway"]
