//go:build tools

// Package tools pins the upstream kube-apiserver main package so that
// `go mod tidy` keeps k8s.io/kubernetes and its dependencies in go.mod/go.sum.
// ../../control-plane builds it with `go build k8s.io/kubernetes/cmd/kube-apiserver`.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
