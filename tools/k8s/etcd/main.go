// etcd 3.6.4, the version Kubernetes 1.34 is tested with, from go.etcd.io/etcd/server/v3 (the
// etcd module itself has replace directives, so `go install go.etcd.io/etcd/v3@v3.6.4` cannot
// work). It is part of this module because k8s.io/kubernetes v1.34.4 already requires
// etcd/server v3.6.4: the versions are the same, and the dependencies it shares with
// kube-apiserver (gRPC, the etcd client) are compiled once.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
