package api

import (
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
)

// TestOpenAPIDocumentIsValid loads the served document as a client's
// generator would and validates it against OpenAPI 3.
func TestOpenAPIDocumentIsValid(t *testing.T) {
	l := openapi3.NewLoader()
	doc, err := l.LoadFromData(openapiDoc)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(l.Context); err != nil {
		t.Fatal(err)
	}
}
