// Package process holds the generated Go types of envd's process service
// (process.proto): starting processes and streaming their output, input and
// signals.
package process
