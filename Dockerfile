# The demo (a replicated key-value store built on embedraft) and the admin
# CLI, embedraftctl. See docs/deploy.md.
#
#   docker build -t embedraft-demo .
#   docker run -p 8080:8080 -v embedraft-data:/data embedraft-demo -cluster -advertise http://HOST:8080

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/demo ./demo \
 && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/embedraftctl ./cmd/embedraftctl

# debian-slim rather than distroless: the Kubernetes example derives the
# node id from the pod ordinal in a small /bin/sh entrypoint.
FROM debian:bookworm-slim
RUN groupadd --system --gid 65532 embedraft \
 && useradd --system --uid 65532 --gid embedraft --home-dir /data --no-create-home --shell /usr/sbin/nologin embedraft \
 && mkdir /data && chown embedraft:embedraft /data && chmod 0750 /data
COPY --from=build /out/demo /out/embedraftctl /usr/local/bin/
USER 65532:65532
VOLUME /data
EXPOSE 8080
# Extra arguments (-advertise, -id, -peers, -join, -cluster) follow these;
# the token comes from the EMBEDRAFT_TOKEN environment variable.
ENTRYPOINT ["/usr/local/bin/demo", "-addr", "0.0.0.0:8080", "-data", "/data"]
