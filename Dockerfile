# The bridge's container image: the release binary and LiveKit's SDK library on Debian
# bookworm-slim, run as an unprivileged user, health-checked with `livekit-bridge ctl health`.
#
#   docker build -t livekit-bridge .          (or: podman build -t livekit-bridge .)
#
# From a binary built outside the image (CI, or a machine that cannot pull the Rust image):
# put `livekit-bridge` and `liblivekit_ffi.so` in dist/ and build with
# `--build-arg BINARIES=dist`; scripts/image does this, and tests/image.rs runs it.
#
# Ports: 9090 gRPC (PORT), 9091 metrics and probes (BRIDGE_HTTP_ADDR). As a sidecar on a shared
# Unix socket, set LIVEKIT_GRPC_SOCKET and BRIDGE_CTL_ADDR=unix:<the same path> (see
# deploy/kubernetes/).

ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
# Where /out/livekit-bridge and /out/liblivekit_ffi.so come from: `build` or `dist`.
ARG BINARIES=build

# The release binary, and LiveKit's library fetched from PyPI and checked against its pinned
# sha256 (scripts/fetch-livekit-ffi; the bridge checks it again when it loads it).
FROM ${RUST_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin livekit-bridge \
    && scripts/fetch-livekit-ffi \
    && mkdir -p /out \
    && cp target/release/livekit-bridge vendor/livekit-ffi/liblivekit_ffi.so /out/

# The same two files, built outside and placed in the build context's dist/.
FROM scratch AS dist
LABEL org.opencontainers.image.title="livekit-bridge"
COPY dist/livekit-bridge dist/liblivekit_ffi.so /out/

FROM ${BINARIES} AS binaries

FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="livekit-bridge" \
      org.opencontainers.image.description="gRPC bridge between a backend and LiveKit rooms"
# ca-certificates: wss:// LiveKit URLs and https:// PlayAudio URLs are checked against them.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid bridge --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin bridge \
    && install -d -o bridge -g bridge -m 0750 /run/livekit-bridge
COPY --from=binaries /out/livekit-bridge /usr/local/bin/livekit-bridge
COPY --from=binaries /out/liblivekit_ffi.so /usr/local/lib/livekit-bridge/liblivekit_ffi.so
ENV LIVEKIT_FFI_LIB=/usr/local/lib/livekit-bridge/liblivekit_ffi.so \
    BRIDGE_HTTP_ADDR=0.0.0.0:9091 \
    BRIDGE_CTL_ADDR=127.0.0.1:9090 \
    RUST_LOG=info
USER 10001:10001
EXPOSE 9090 9091
# SIGTERM drains: open streams get BRIDGE_SHUTDOWN_TIMEOUT_MS (default 5 s) to finish.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/livekit-bridge", "ctl", "health"]
ENTRYPOINT ["/usr/local/bin/livekit-bridge"]
