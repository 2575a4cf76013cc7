# syntax=docker/dockerfile:1
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/refgc ./cmd/refgc

FROM gcr.io/distroless/static-debian12:nonroot
USER 65532:65532
COPY --from=build /out/refgc /usr/local/bin/refgc
EXPOSE 8080 4222
VOLUME ["/var/lib/refgc"]
ENTRYPOINT ["/usr/local/bin/refgc"]
CMD ["serve", "--config", "/etc/refgc/refgc.yml"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=2m CMD ["/usr/local/bin/refgc", "health"]
