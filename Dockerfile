# syntax=docker/dockerfile:1
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/refgc ./cmd/refgc

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/refgc /usr/local/bin/refgc
EXPOSE 8080 4222
VOLUME ["/var/lib/refgc"]
ENTRYPOINT ["/usr/local/bin/refgc"]
CMD ["serve", "--config", "/etc/refgc/refgc.yml"]
