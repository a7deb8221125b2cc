//go:build tools

// Package tools records the adapter's main package so `go mod tidy` keeps it required.
package tools

import (
	_ "sigs.k8s.io/prometheus-adapter/cmd/adapter"
)
