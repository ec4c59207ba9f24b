// CoreDNS v1.12.4 as the cluster DNS (Service kube-dns), built with only the plugins its
// Corefile uses instead of CoreDNS' full list (which brings in the SDKs of AWS, Azure and
// Google Cloud, etcd, dnstap and more, and takes minutes longer to build): the same server,
// the same plugin code; any other directive in a Corefile is refused with "unknown directive".
// This is how CoreDNS documents building with a chosen set of plugins (a main package
// importing them, instead of core/plugin's generated list).
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func main() { coremain.Run() }
