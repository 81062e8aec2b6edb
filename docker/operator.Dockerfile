# syntax=docker/dockerfile:1
# kubesbc operator image. Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/kubesbc/operator:0.1.0 .
FROM docker.io/library/rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kubesbc-operator --bin kubesbc-operator \
    && install -D target/release/kubesbc-operator /out/kubesbc-operator

# Distroless: no shell, no package manager; glibc only (TLS is rustls).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/kubesbc-operator /usr/local/bin/kubesbc-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/kubesbc-operator"]
