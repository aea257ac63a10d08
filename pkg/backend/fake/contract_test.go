package fake_test

import (
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/backendtest"
	"github.com/csi-thin/csi-thin/pkg/backend/fake"
)

// TestContract holds the fake to the rules the real backends keep, so
// that tests written against it stand for them.
func TestContract(t *testing.T) {
	backendtest.Run(t, backendtest.Options{New: func(*testing.T) backend.Local { return fake.New("n1", 10*backend.GiB) }})
}
