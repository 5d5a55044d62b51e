# smtp_exporter container image.
#
#   docker build -t smtp-exporter:$(cat VERSION) \
#     --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg BRANCH=$(git rev-parse --abbrev-ref HEAD) \
#     --build-arg BUILD_USER=$(id -un)@$(uname -n) \
#     --build-arg BUILD_DATE=$(date -u +%Y%m%d-%H:%M:%S) .
#   docker run -p 9465:9465 smtp-exporter:$(cat VERSION)
#
# The configuration is read from /etc/smtp_exporter/smtp_exporter.yml (the
# shipped one unless a volume replaces it); mount password files beside it.

FROM golang:1.26 AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The version, as every build of the project fills it (README, Releases):
# VERSION defaults to the VERSION file; the others are set only when given,
# and show "unknown" otherwise (the build context has no .git to read them
# from).
ARG VERSION=
ARG REVISION=
ARG BRANCH=
ARG BUILD_USER=
ARG BUILD_DATE=
# A static binary (no cgo), without local paths, carrying its version for
# --version and smtp_exporter_build_info.
RUN set -e; \
    v=github.com/prometheus/common/version; \
    flags="-s -w -X $v.Version=${VERSION:-$(cat VERSION)}"; \
    [ -z "$REVISION" ] || flags="$flags -X $v.Revision=$REVISION"; \
    [ -z "$BRANCH" ] || flags="$flags -X $v.Branch=$BRANCH"; \
    [ -z "$BUILD_USER" ] || flags="$flags -X $v.BuildUser=$BUILD_USER"; \
    [ -z "$BUILD_DATE" ] || flags="$flags -X $v.BuildDate=$BUILD_DATE"; \
    CGO_ENABLED=0 go build -trimpath -ldflags "$flags" -o /out/smtp_exporter .; \
    /out/smtp_exporter --version

# distroless/static rather than scratch: it has the CA certificates that
# verifying an SMTP server's certificate needs, /etc/passwd and time zones.
FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/smtp_exporter /bin/smtp_exporter
COPY smtp_exporter.yml /etc/smtp_exporter/smtp_exporter.yml
USER 65534:65534
EXPOSE 9465
ENTRYPOINT ["/bin/smtp_exporter", "--config.file=/etc/smtp_exporter/smtp_exporter.yml"]
