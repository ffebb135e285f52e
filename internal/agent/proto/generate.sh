#!/bin/sh
# Regenerates the Go code for the envd wire contract (process.proto and
# filesystem.proto) with protoc and the Go plugins at the versions go.mod
# pins, so the generated code always matches the runtime libraries.
#
# Needs protoc (Debian: apt-get install -y protobuf-compiler), which also
# ships google/protobuf/timestamp.proto under /usr/include.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)

command -v protoc >/dev/null 2>&1 || {
	echo "generate.sh: protoc not found: apt-get install -y protobuf-compiler" >&2
	exit 1
}

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT INT TERM

# Built inside the module so the versions come from go.mod.
(cd "$root" && go build -o "$bin/" \
	google.golang.org/protobuf/cmd/protoc-gen-go \
	connectrpc.com/connect/cmd/protoc-gen-connect-go)

include=/usr/include
[ -f "$include/google/protobuf/timestamp.proto" ] || {
	echo "generate.sh: google/protobuf/timestamp.proto not under $include" >&2
	exit 1
}

cd "$here"
PATH="$bin:$PATH" protoc \
	-I "$here" -I "$include" \
	--go_out="$here" --go_opt=paths=source_relative \
	--connect-go_out="$here" --connect-go_opt=paths=source_relative \
	process/process.proto filesystem/filesystem.proto
