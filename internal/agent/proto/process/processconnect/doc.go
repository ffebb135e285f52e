// Package processconnect holds the generated Connect RPC client and handler
// of envd's process service.
package processconnect
