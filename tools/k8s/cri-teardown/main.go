// cri-teardown stops and removes every pod sandbox of a CRI runtime (containerd here), the way
// the kubelet does when it deletes a pod: StopPodSandbox stops the containers and runs the CNI
// DEL that releases the pod's IP address, veth and hostPort rules; RemovePodSandbox then removes
// the containers and the network namespace. `scripts/cluster down` runs it once the kubelet is
// stopped, so that no pod's network rules or mounts outlive the cluster. It is the only part of
// crictl the cluster needs, and builds in seconds from packages the kubelet already compiles.
//
//	cri-teardown unix:///path/to/containerd.sock
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: cri-teardown unix:///path/to/runtime.sock")
		os.Exit(2)
	}
	conn, err := grpc.NewClient(os.Args[1], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fail("connecting to %s: %v", os.Args[1], err)
	}
	defer conn.Close()
	runtime := runtimeapi.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	list, err := runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		fail("listing pod sandboxes: %v", err)
	}
	failed := 0
	for _, sandbox := range list.Items {
		name := sandbox.Id[:12]
		if m := sandbox.Metadata; m != nil {
			name = m.Namespace + "/" + m.Name
		}
		if _, err := runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandbox.Id}); err != nil {
			fmt.Fprintf(os.Stderr, "cri-teardown: stopping %s: %v\n", name, err)
			failed++
			continue
		}
		if _, err := runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandbox.Id}); err != nil {
			fmt.Fprintf(os.Stderr, "cri-teardown: removing %s: %v\n", name, err)
			failed++
		}
	}
	fmt.Printf("%d pod sandboxes stopped and removed, %d failed\n", len(list.Items)-failed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "cri-teardown: "+format+"\n", args...)
	os.Exit(1)
}
