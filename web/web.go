// Package web holds the /test page: a single HTML file, embedded into the
// daemon, that manages sandboxes through the same REST API as every client,
// and the assets it loads (xterm.js for its terminal, bundled at build time
// from the npm packages web/package.json pins, so the page needs no CDN).
package web

import (
	"embed"
	"io/fs"
)

// TestPage is the /test page.
//
//go:embed test.html
var TestPage []byte

//go:embed assets
var assets embed.FS

// Assets are the files the /test page loads from /test/assets/.
var Assets, _ = fs.Sub(assets, "assets")
