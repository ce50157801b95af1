# The operator image (ghcr.io/<owner>/cairn-operator): the `cairn` binary, statically linked
# against musl, alone in an empty image (no shell, no package manager, no libc), running as UID
# 65532. The Helm chart runs it as `cairn operator`; `cairn migrate` is the migration Job.
#
#   docker build -t cairn-operator .                      # compiles in a rust:alpine stage
#   docker build --target prebuilt -t cairn-operator .    # takes dist/linux-<arch>/cairn, e.g.
#       CARGO_PROFILE_RELEASE_STRIP=debuginfo cargo build --release --target x86_64-unknown-linux-musl -p cairn-operator
#       mkdir -p dist/linux-amd64 && cp target/x86_64-unknown-linux-musl/release/cairn dist/linux-amd64/
#   (the release workflow builds it natively per architecture; buildah and podman work too)
#
# The image holds no CA bundle: a database reached with sslmode=verify-ca/verify-full names its
# CA with sslrootcert= in the URL (a mounted file).

# A. The image from a binary built outside, for the platform being built.
FROM scratch AS prebuilt
ARG TARGETARCH
COPY dist/linux-${TARGETARCH}/cairn /usr/local/bin/cairn
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cairn"]
CMD ["operator"]

# B. The default: the binary from source (rust:alpine targets musl, so it comes out static)...
FROM docker.io/library/rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
# Queries are checked against the committed .sqlx/, without a database.
ENV SQLX_OFFLINE=true
# Without the release profile's line tables (backtraces keep function names): 30 MB, not 165 MB.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN cargo build --release --locked -p cairn-operator \
    && mkdir /out && cp target/release/cairn /out/cairn

# ...and the image: the binary and nothing else.
FROM scratch
COPY --from=build /out/cairn /usr/local/bin/cairn
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cairn"]
CMD ["operator"]
