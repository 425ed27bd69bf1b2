//go:build tools

// Package tools pins the upstream etcd main package (the root package of
// go.etcd.io/etcd/server/v3) so that `go mod tidy` keeps it in go.mod/go.sum.
// ../../control-plane builds it with `go build go.etcd.io/etcd/server/v3`.
package tools

import _ "go.etcd.io/etcd/server/v3"
