// Package agent is the node daemon of lbpair: it runs the VRRP election for a
// LoadBalancerPair, holds the virtual IPs while it is master, and proxies TCP
// from the virtual IPs to the backends. It runs either standalone from a file
// (no Kubernetes needed) or in a cluster as a pod of the pair's DaemonSet.
package agent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
)

// Options are the agent's command-line settings.
type Options struct {
	// ConfigFile selects standalone mode: a LoadBalancerPair manifest plus
	// this node's settings, read from a file instead of the apiserver.
	ConfigFile string
	// NodeName is the node this agent runs on; it names the agent's entry in
	// the pair's status and selects its settings in a standalone file.
	NodeName string
	// Namespace and Pair name the LoadBalancerPair in cluster mode.
	Namespace string
	Pair      string
	// PodName, in cluster mode, names the agent's own pod, whose node
	// selection the agent follows.
	PodName string
	// Kubeconfig is an optional path; in-cluster config is used when empty.
	Kubeconfig string
	// HealthAddr is where /healthz, /readyz and /metrics are served.
	HealthAddr string
	// StateDir, in cluster mode, keeps the last configuration the agent
	// applied; empty keeps nothing.
	StateDir string
	// LastConfigWait is how long a starting cluster agent waits for the
	// apiserver before it serves with the configuration kept in StateDir.
	LastConfigWait time.Duration
	// Check, in standalone mode, loads ConfigFile as a start or a reload
	// would and exits: the systemd unit's reload runs it first, so that
	// `systemctl reload` fails on a file the agent would refuse.
	Check bool
	// Log configures the logger.
	Log zap.Options
}

// ParseOptions reads the agent's flags. Defaults for the node, namespace and
// pair come from the environment the DaemonSet sets through the downward API.
func ParseOptions(args []string, output io.Writer) (Options, error) {
	var o Options
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.StringVar(&o.ConfigFile, "config", "", "standalone mode: path of a file holding a LoadBalancerPair manifest and this node's settings")
	fs.StringVar(&o.NodeName, "node-name", os.Getenv("NODE_NAME"), "name of this node (default $NODE_NAME)")
	fs.StringVar(&o.Namespace, "namespace", os.Getenv("POD_NAMESPACE"), "cluster mode: namespace of the LoadBalancerPair (default $POD_NAMESPACE)")
	fs.StringVar(&o.Pair, "pair", os.Getenv("LBPAIR_NAME"), "cluster mode: name of the LoadBalancerPair (default $LBPAIR_NAME)")
	fs.StringVar(&o.PodName, "pod-name", os.Getenv("POD_NAME"), "cluster mode: name of the agent's pod, whose nodeSelector the agent follows; without it, the pair's spec.nodeSelector (default $POD_NAME)")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "cluster mode: kubeconfig path; in-cluster config when empty")
	fs.StringVar(&o.HealthAddr, "health-addr", ":9440", "address serving /healthz, /readyz and /metrics")
	fs.StringVar(&o.StateDir, "state-dir", "", "cluster mode: directory that keeps the last applied configuration across restarts of the agent, so that one restarted while the apiserver is unreachable serves with it; empty keeps nothing")
	fs.DurationVar(&o.LastConfigWait, "last-config-wait", 10*time.Second, "cluster mode: how long a starting agent waits for the apiserver before it serves with the configuration kept in --state-dir")
	fs.BoolVar(&o.Check, "check", false, "standalone mode: load --config as a start or a reload would, print what is wrong, and exit (0 when it loads); run it before sending SIGHUP")
	o.Log.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.NodeName == "" {
		return o, errors.New("--node-name is required (or set NODE_NAME)")
	}
	if o.ConfigFile == "" && (o.Namespace == "" || o.Pair == "") {
		return o, errors.New("give --config FILE for standalone mode, or --namespace and --pair for cluster mode")
	}
	if o.Check && o.ConfigFile == "" {
		return o, errors.New("--check checks a standalone file: give --config FILE")
	}
	if o.ConfigFile != "" && o.StateDir != "" {
		return o, errors.New("--state-dir is for cluster mode; a standalone agent reads its configuration from --config")
	}
	if o.LastConfigWait < 0 {
		return o, fmt.Errorf("--last-config-wait %v: give a duration of 0 or more (0 serves the kept configuration at once)", o.LastConfigWait)
	}
	return o, nil
}

// Main runs the agent until ctx is cancelled (SIGTERM), then stops
// gracefully: it gives up the virtual IPs and drains connections.
func Main(ctx context.Context, args []string) error {
	o, err := ParseOptions(args, os.Stderr)
	if err != nil {
		return err
	}
	log := zap.New(zap.UseFlagOptions(&o.Log)).WithValues("node", o.NodeName)
	// The watch cache and client-go's reflectors log through controller-runtime's
	// logger: without one they drop their messages and print a stack trace.
	ctrllog.SetLogger(log)
	if o.Check {
		if _, err := loadStandalone(ctx, o, log); err != nil {
			return err
		}
		fmt.Printf("%s: the configuration loads\n", o.ConfigFile)
		return nil
	}
	return run(ctx, o, log)
}
