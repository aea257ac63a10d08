package main

import (
	"context"
	"errors"
)

// Placeholder until the Kubernetes layer lands.
func runController(ctx context.Context, o *options) error {
	return errors.New("controller mode is not built yet")
}

func runNode(ctx context.Context, o *options) error { return errors.New("node mode is not built yet") }
