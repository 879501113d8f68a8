// Command demo runs lbpair's control plane on this machine: a real
// kube-apiserver and etcd (the envtest binaries hack/tools.sh builds), the
// manager, and the seed sample; it shows what `kubectl get lbpair` reports
// and the DaemonSet the manager writes. There is no kubelet, so no agent pod
// runs: the DaemonSet is shown, not run.
//
// Usage: go run ./hack/demo [-wait]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

func main() {
	wait := flag.Bool("wait", false, "keep the apiserver and manager running until Ctrl-C, to explore with kubectl")
	flag.Parse()
	if err := run(*wait); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func say(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func run(wait bool) error {
	root, err := os.Getwd()
	if err != nil {
		return err
	}
	bin := filepath.Join(root, "bin")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	say("Starting a real kube-apiserver and etcd (built from Go modules into bin/)")
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: bin,
	}
	if _, err := env.Start(); err != nil {
		return fmt.Errorf("starting the apiserver: %w", err)
	}
	defer func() {
		say("Stopping the apiserver and etcd")
		_ = env.Stop()
	}()
	user, err := env.AddUser(envtest.User{Name: "demo", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "lbpair-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		return err
	}
	kubectl := func(stdin string, args ...string) error {
		fmt.Printf("$ kubectl %s\n", strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "kubectl"), append([]string{"--kubeconfig", kubeconfig}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		return cmd.Run()
	}

	say("Building and starting the manager (bin/lbpair manager)")
	build := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(bin, "lbpair"), ".")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building bin/lbpair: %w", err)
	}
	logPath := filepath.Join(dir, "manager.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	mgr := exec.Command(filepath.Join(bin, "lbpair"), "manager", "--kubeconfig", kubeconfig,
		"--agent-image", "ghcr.io/lbpair/lbpair:0.1.0", "--metrics-bind-address", "0", "--health-probe-bind-address", "0")
	mgr.Stdout, mgr.Stderr = logFile, logFile
	if err := mgr.Start(); err != nil {
		return fmt.Errorf("starting the manager: %w", err)
	}
	defer func() {
		_ = mgr.Process.Signal(syscall.SIGTERM)
		_ = mgr.Wait()
	}()

	say("Two nodes for the pair (Node objects only: this machine runs no kubelet)")
	nodes := `apiVersion: v1
kind: Node
metadata: {name: lb1, labels: {lbpair.io/lb: "true", lbpair.io/priority: "100"}}
---
apiVersion: v1
kind: Node
metadata: {name: lb2, labels: {lbpair.io/lb: "true", lbpair.io/priority: "90"}}
`
	if err := kubectl(nodes, "apply", "-f", "-"); err != nil {
		return err
	}

	say("Applying the seed recipe: VIP 198.18.0.100, port 88, backends web01 and web02")
	if err := kubectl("", "apply", "-f", filepath.Join(root, "config", "samples", "seed.yaml")); err != nil {
		return err
	}
	select {
	case <-time.After(3 * time.Second):
	case <-ctx.Done():
		return nil
	}
	say("What kubectl get lbpair shows (no agent runs here, so no holder yet)")
	if err := kubectl("", "get", "lbpair", "-o", "wide"); err != nil {
		return err
	}
	say("The DaemonSet of agents the manager wrote (hostNetwork, NET_ADMIN+NET_RAW, health port from the VRID)")
	if err := kubectl("", "get", "daemonset", "-o", "wide"); err != nil {
		return err
	}
	if err := kubectl("", "get", "lbpair", "web", "-o", "jsonpath={range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{\"\\n\"}{end}"); err != nil {
		return err
	}
	say("Events")
	if err := kubectl("", "get", "events", "--sort-by=.metadata.creationTimestamp"); err != nil {
		return err
	}
	if wait {
		say("Running until Ctrl-C. In another shell:  export KUBECONFIG=%s; bin/kubectl get lbpair -w", kubeconfig)
		<-ctx.Done()
	}
	return nil
}
