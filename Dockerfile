# hopwarden and the demo service, for docker-compose.yml.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin hopwarden --example demo-service

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 hopwarden
COPY --from=build /src/target/release/hopwarden /usr/local/bin/hopwarden
COPY --from=build /src/target/release/examples/demo-service /usr/local/bin/demo-service
USER hopwarden
EXPOSE 9191
ENTRYPOINT ["hopwarden"]
CMD ["serve", "--config", "/etc/hopwarden/hopwarden.yaml"]
