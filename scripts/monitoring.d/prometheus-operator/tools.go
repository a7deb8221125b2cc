//go:build tools

// Package tools records the operator's main package so `go mod tidy` keeps it required.
package tools

import (
	_ "github.com/prometheus-operator/prometheus-operator/cmd/operator"
)
