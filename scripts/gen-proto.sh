#!/usr/bin/env bash
# Regenerates cluster/proto/*.pb.go from cluster/proto/*.proto.
# Needs protoc (Debian: protobuf-compiler) and the Go plugins:
#   go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
#   go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@latest
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$(go env GOPATH)/bin:$PATH"
for tool in protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" >/dev/null || { echo "gen-proto: $tool not found on PATH" >&2; exit 1; }
done
protoc -I cluster/proto \
  --go_out=cluster/proto --go_opt=paths=source_relative \
  --go-grpc_out=cluster/proto --go-grpc_opt=paths=source_relative \
  cluster/proto/*.proto
echo "gen-proto: regenerated $(ls cluster/proto/*.pb.go | tr '\n' ' ')"
