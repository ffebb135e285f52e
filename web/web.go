// Package web holds the /test page: a single HTML file, embedded into the
// daemon, that manages sandboxes through the same REST API as every client.
package web

import _ "embed"

// TestPage is the /test page.
//
//go:embed test.html
var TestPage []byte
