// Package filesystem holds the generated Go types of envd's filesystem
// service (filesystem.proto): stat, list, make, move, remove and watch.
package filesystem
