# Builds the firmcast and firmcast-agent binaries into a small image.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/firmcast ./cmd/firmcast && \
    CGO_ENABLED=0 go build -trimpath -o /out/firmcast-agent ./cmd/firmcast-agent

FROM gcr.io/distroless/static-debian12
COPY --from=build /out/ /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/firmcast"]
