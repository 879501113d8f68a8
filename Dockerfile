# One image, two roles: the manager (runs as the image's non-root user) and
# the agent (its DaemonSet runs the same image as root with only NET_ADMIN,
# NET_RAW and NET_BIND_SERVICE, which VRRP, the VIP and low ports need).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY api/ api/
COPY agent/ agent/
COPY config/crd/ config/crd/
COPY controllers/ controllers/
COPY main.go memlimit.go ./
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags "-s -w" -o /out/lbpair .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/lbpair /lbpair
USER 65532:65532
ENTRYPOINT ["/lbpair"]
CMD ["manager"]
