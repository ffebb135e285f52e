// Package proto holds ember-agent's wire contract: E2B's envd protocol as
// compiled into the e2b SDK. process/ and filesystem/ hold our .proto files
// with their generated Go types, and processconnect/ and filesystemconnect/
// the Connect RPC bindings. generate.sh regenerates them; this package's test
// checks every message, field, enum and method against the descriptors the
// SDK embeds, so a drift on either side fails the build.
package proto
