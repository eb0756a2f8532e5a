# hopwarden's container images. Targets:
#   hopwarden (the default)  hopwarden built from source: docker build -t hopwarden:0.1.0 .
#   demo                     the demo upstream of the local stack (docker-compose.yml)
#   hopwarden-prebuilt, demo-prebuilt
#                            the same images from binaries built on the host, with a build
#                            context holding only them (scripts/images.sh: no Rust image)
# Both images run as the unprivileged user 10001 and carry no build tools.

ARG VERSION=0.1.0

# Build from source: only the binary and the example each image needs.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin hopwarden --example demo-service

# The runtime base: Debian with CA roots (JWKS over https) and the user to run as.
FROM docker.io/library/debian:bookworm-slim AS runtime
ARG VERSION
# A base that already has the CA roots (scripts/images.sh builds one with them) needs no
# package index.
RUN if [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then \
      apt-get update && apt-get install -y --no-install-recommends ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin hopwarden
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 10001:10001

FROM runtime AS demo-prebuilt
LABEL org.opencontainers.image.title="hopwarden-demo" \
      org.opencontainers.image.description="The local stack's demo upstream (not for production)"
COPY demo-service /usr/local/bin/demo-service
ENTRYPOINT ["demo-service"]

FROM runtime AS demo
LABEL org.opencontainers.image.title="hopwarden-demo" \
      org.opencontainers.image.description="The local stack's demo upstream (not for production)"
COPY --from=build /src/target/release/examples/demo-service /usr/local/bin/demo-service
ENTRYPOINT ["demo-service"]

FROM runtime AS hopwarden-prebuilt
LABEL org.opencontainers.image.title="hopwarden" \
      org.opencontainers.image.description="Envoy external authorization (ext_authz v3) server"
COPY hopwarden /usr/local/bin/hopwarden
# ext_authz gRPC, admin (metrics, /healthz, /readyz), ext_authz HTTP service.
EXPOSE 9191 9192 9193
ENTRYPOINT ["hopwarden"]
CMD ["serve", "--config", "/etc/hopwarden/hopwarden.yaml"]

FROM runtime AS hopwarden
LABEL org.opencontainers.image.title="hopwarden" \
      org.opencontainers.image.description="Envoy external authorization (ext_authz v3) server"
COPY --from=build /src/target/release/hopwarden /usr/local/bin/hopwarden
EXPOSE 9191 9192 9193
ENTRYPOINT ["hopwarden"]
CMD ["serve", "--config", "/etc/hopwarden/hopwarden.yaml"]
