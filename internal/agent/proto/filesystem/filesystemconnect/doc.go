// Package filesystemconnect holds the generated Connect RPC client and
// handler of envd's filesystem service.
package filesystemconnect
