# Raven as a container. Build stage: the same setup the README's commands
# run (`cargo xtask setup`: nightly rust-src and bpf-linker for the XDP
# object), then the release agent. Runtime stage: Debian slim with openvpn.
#
# Run with host networking and either --privileged or the narrow set:
#   docker run -d --name raven --network host \
#     --cap-add BPF --cap-add PERFMON --cap-add NET_ADMIN \
#     --cap-add NET_BIND_SERVICE --cap-add NET_RAW \
#     -v /sys/fs/bpf:/sys/fs/bpf -v raven-data:/data \
#     -v "$PWD/config/raven.toml:/etc/raven/raven.toml:ro" raven
# (docs/install.md says which feature needs which capability.)

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo xtask setup \
    && cargo build --release --locked --package raven-agent \
    && install -D -m 0755 target/release/raven-agent /out/raven-agent

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl openvpn \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/raven-agent /usr/local/bin/raven-agent
COPY config/raven.toml /etc/raven/raven.toml
VOLUME ["/data"]
EXPOSE 514/udp 162/udp 2055/udp 4739/udp 6343/udp 9184/tcp 8084/tcp
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["curl", "-fsS", "http://127.0.0.1:9184/healthz"]
ENTRYPOINT ["/usr/local/bin/raven-agent"]
CMD ["run", "--config", "/etc/raven/raven.toml", "--data-dir", "/data"]
