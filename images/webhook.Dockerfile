# syntax=docker/dockerfile:1.7
#
# rolebridge-webhook image: a static release binary on `scratch` with a CA bundle, run as 65532:65532.
# Build from the repository root (see images/README.md for multi-arch):
#
#   docker buildx build -f images/webhook.Dockerfile --platform linux/amd64,linux/arm64 \
#     $(scripts/images.sh build-args) -t ghcr.io/rolebridge/rolebridge-webhook:$VERSION --push .
#
# Without Docker: scripts/images.sh build (the same files and config, as an OCI layout).
#
# The build stage runs on the builder's own platform and cross-compiles for each target platform,
# so an arm64 image needs no emulation. images/make-rootfs.sh assembles the final filesystem; the
# same script is exercised without Docker by scripts/empty-root-test.sh and scripts/images.sh.

ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm

FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
ARG TARGETARCH
ARG BUILDARCH
# Cross toolchains only when the target architecture differs from the builder's.
RUN set -eux; \
    case "$TARGETARCH" in \
      amd64) triple=x86_64-unknown-linux-gnu;  gcc=x86-64 ;; \
      arm64) triple=aarch64-unknown-linux-gnu; gcc=aarch64 ;; \
      *) echo "unsupported TARGETARCH $TARGETARCH" >&2; exit 1 ;; \
    esac; \
    echo "$triple" > /rust-target; \
    rustup target add "$triple"; \
    if [ "$TARGETARCH" != "$BUILDARCH" ]; then \
      apt-get update; \
      apt-get install -y --no-install-recommends "gcc-$gcc-linux-gnu" "libc6-dev-$TARGETARCH-cross"; \
      rm -rf /var/lib/apt/lists/*; \
    fi
# Linkers and C compilers (ring, aws-lc-sys) per target; the native names exist on both hosts.
ENV CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=x86_64-linux-gnu-gcc \
    CC_x86_64_unknown_linux_gnu=x86_64-linux-gnu-gcc \
    AR_x86_64_unknown_linux_gnu=x86_64-linux-gnu-ar \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
    AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
    CARGO_TERM_COLOR=never
WORKDIR /src
COPY . .
# scripts/static-build.sh is the same static release build the Docker-free path runs (remapped
# paths, +crt-static for the target only); make-rootfs.sh the same root filesystem.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,id=rolebridge-target-$TARGETARCH,sharing=locked \
    set -eux; \
    triple="$(cat /rust-target)"; \
    bash scripts/static-build.sh --target "$triple" rolebridge-webhook; \
    sh images/make-rootfs.sh "target/$triple/release/rolebridge-webhook" /rootfs /etc/ssl/certs/ca-certificates.crt

FROM scratch
# Everything below is also read by images/oci-image.py, which writes the same image without Docker;
# it refuses instructions it does not know. The values: $(scripts/images.sh build-args).
ARG VERSION
ARG REVISION
ARG CREATED
COPY --from=build /rootfs/ /
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    MIMALLOC_ARENA_EAGER_COMMIT=0
USER 65532:65532
EXPOSE 10250 8080
ENTRYPOINT ["/rolebridge-webhook"]
CMD ["serve"]
LABEL org.opencontainers.image.title="rolebridge-webhook" \
      org.opencontainers.image.description="Mutating admission webhook that injects the rolebridge agent into bound GKE pods" \
      org.opencontainers.image.source="https://github.com/rolebridge/rolebridge" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
