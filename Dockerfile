# smtp_exporter container image.
#
#   docker build -t smtp-exporter \
#     --build-arg VERSION=$(git describe --tags --always) \
#     --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg BRANCH=$(git rev-parse --abbrev-ref HEAD) .
#   docker run -p 9465:9465 smtp-exporter
#
# The configuration is read from /etc/smtp_exporter/smtp_exporter.yml (the
# shipped one unless a volume replaces it); mount password files beside it.

FROM golang:1.26 AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=unknown
ARG REVISION=unknown
ARG BRANCH=unknown
ARG BUILD_USER=docker
ARG BUILD_DATE=unknown
# A static binary (no cgo), without local paths, carrying its version for
# --version and smtp_exporter_build_info.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w \
      -X github.com/prometheus/common/version.Version=${VERSION} \
      -X github.com/prometheus/common/version.Revision=${REVISION} \
      -X github.com/prometheus/common/version.Branch=${BRANCH} \
      -X github.com/prometheus/common/version.BuildUser=${BUILD_USER} \
      -X github.com/prometheus/common/version.BuildDate=${BUILD_DATE}" \
    -o /out/smtp_exporter .

# distroless/static rather than scratch: it has the CA certificates that
# verifying an SMTP server's certificate needs, /etc/passwd and time zones.
FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/smtp_exporter /bin/smtp_exporter
COPY smtp_exporter.yml /etc/smtp_exporter/smtp_exporter.yml
USER 65534:65534
EXPOSE 9465
ENTRYPOINT ["/bin/smtp_exporter", "--config.file=/etc/smtp_exporter/smtp_exporter.yml"]
