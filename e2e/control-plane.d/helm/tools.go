//go:build tools

// Package tools pins the upstream helm main package so that `go mod tidy` keeps
// helm.sh/helm/v3 and its dependencies in go.mod/go.sum.
// ../../control-plane builds it with `go build helm.sh/helm/v3/cmd/helm`.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
