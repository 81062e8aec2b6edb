# syntax=docker/dockerfile:1
# kubesbc sbc (SIP proxy) image. Build from the repository root:
#   docker build -f docker/sbc.Dockerfile -t ghcr.io/kubesbc/sbc:0.1.0 .
FROM docker.io/library/rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kubesbc-sbc --bin sbc \
    && install -D target/release/sbc /out/sbc

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/sbc /usr/local/bin/sbc
# Unprivileged ports only by default; the operator adds NET_BIND_SERVICE for ports < 1024.
USER 65532:65532
EXPOSE 5060/udp 5060/tcp 9090/tcp
ENTRYPOINT ["/usr/local/bin/sbc"]
CMD ["--config", "/etc/kubesbc/config/sbc.yaml"]
