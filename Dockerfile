# x402d container: build with the Rust toolchain, run on a slim Debian as a non-root user.
#   docker build -t x402d .
#   docker run -p 4021:4021 -v $PWD/x402d.toml:/etc/x402d/x402d.toml:ro -v x402d-data:/var/lib/x402d \
#     -e X402D_GAS_KEY=… x402d
# In the config, put the SQLite ledger on the volume: url = "sqlite:///var/lib/x402d/ledger.db".

FROM rust:1-bookworm AS builder
WORKDIR /src
# What the build reads: the manifest, the sources, the migrations (embedded by sqlx::migrate!), the
# HTML templates (compiled in by askama), the contract artifacts (embedded for `x402d dev`) and the
# declared bench target.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY templates ./templates
COPY contracts/out ./contracts/out
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin x402d \
    && cp target/release/x402d /usr/local/bin/x402d

FROM debian:bookworm-slim
# ca-certificates: HTTPS to RPC providers and PostgreSQL over TLS; curl: the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system x402d \
    && useradd --system --gid x402d --home-dir /var/lib/x402d --shell /usr/sbin/nologin x402d \
    && mkdir -p /etc/x402d /var/lib/x402d \
    && chown x402d:x402d /var/lib/x402d
COPY --from=builder /usr/local/bin/x402d /usr/local/bin/x402d
COPY x402d.example.toml /etc/x402d/x402d.example.toml
USER x402d
WORKDIR /var/lib/x402d
VOLUME ["/var/lib/x402d"]
# Listen on every interface inside the container (the config file's default is loopback only).
ENV X402D_SERVER__LISTEN=0.0.0.0:4021
EXPOSE 4021
# Liveness only; load balancers should use /ready (database, RPC and gas wallet checks).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD curl --fail --silent --max-time 2 http://127.0.0.1:4021/health || exit 1
ENTRYPOINT ["x402d"]
CMD ["--log-format", "json", "serve", "--config", "/etc/x402d/x402d.toml"]
