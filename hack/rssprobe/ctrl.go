//go:build ctrl

package main

// Linked only for the comparison: importing controller-runtime runs the
// init of client-go's scheme (every built-in API group) and its own.
import _ "sigs.k8s.io/controller-runtime"
