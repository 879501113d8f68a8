// Command lbpair is the one binary of lbpair, with two roles: `lbpair
// manager` reconciles LoadBalancerPairs into DaemonSets of agents, and
// `lbpair agent` is the agent those DaemonSets run (or that runs standalone
// from a file, without Kubernetes).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/client/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/lbpair/lbpair/agent"
	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
	"github.com/lbpair/lbpair/controllers"
)

const usage = `usage: lbpair manager [flags]   reconcile LoadBalancerPairs (run in the cluster)
       lbpair agent [flags]     run a pair's agent (in its DaemonSet, or standalone with --config)
Run "lbpair manager -h" or "lbpair agent -h" for the flags.`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	if err := setMemoryLimit(); err != nil {
		fmt.Fprintf(os.Stderr, "lbpair: leaving the Go runtime without a memory limit: %v\n", err)
	}
	ctx := ctrl.SetupSignalHandler()
	var err error
	switch os.Args[1] {
	case "manager":
		err = runManager(ctx, os.Args[2:])
	case "agent":
		err = agent.Main(ctx, os.Args[2:])
	case "-h", "--help", "help":
		fmt.Println(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n%s\n", os.Args[1], usage)
		os.Exit(2)
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "lbpair %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func runManager(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("manager", flag.ContinueOnError)
	var (
		metricsAddr, probeAddr, watchNamespace, leaderNamespace, agentImage, pullPolicy, agentResources, priorityClass string
		leaderElect                                                                                                    bool
		logOpts                                                                                                        zap.Options
	)
	fs.StringVar(&metricsAddr, "metrics-bind-address", ":8080", `address of the Prometheus metrics endpoint; "0" turns it off`)
	fs.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address of the /healthz and /readyz endpoints")
	fs.BoolVar(&leaderElect, "leader-elect", false, "elect a leader, so that several replicas can run with one active")
	fs.StringVar(&leaderNamespace, "leader-election-namespace", "", "namespace of the leader election Lease (default: the manager's own)")
	fs.StringVar(&watchNamespace, "watch-namespace", os.Getenv("WATCH_NAMESPACE"), "run the pairs of this namespace only, all namespaces when empty; VRIDs are still checked against the pairs of every namespace")
	fs.StringVar(&agentImage, "agent-image", os.Getenv("AGENT_IMAGE"), "image of the agents (the lbpair image itself; required, default $AGENT_IMAGE)")
	fs.StringVar(&pullPolicy, "agent-image-pull-policy", "", "pull policy of the agents' image: Always, IfNotPresent or Never (default: Kubernetes' own)")
	defaultResources, _ := json.Marshal(controllers.DefaultAgentResources())
	fs.StringVar(&agentResources, "agent-resources", "", fmt.Sprintf("resources of the agents' container, as JSON; replaces the default %s", defaultResources))
	var pullSecrets []string
	fs.Func("agent-image-pull-secret", "a Secret, in each pair's namespace, to pull the agents' image with; repeat it for several", func(name string) error {
		if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
			return fmt.Errorf("%q is not a Secret name: %s", name, strings.Join(errs, "; "))
		}
		pullSecrets = append(pullSecrets, name)
		return nil
	})
	fs.StringVar(&priorityClass, "agent-priority-class", "", "priority class of the agents' pods, such as system-node-critical, which the kubelet never evicts for want of memory or disk (default: the cluster's default priority)")
	ctrlconfig.RegisterFlags(fs)
	logOpts.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if agentImage == "" {
		return errors.New("--agent-image (or AGENT_IMAGE) is required: the image the agents' DaemonSets run")
	}
	switch corev1.PullPolicy(pullPolicy) {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		return fmt.Errorf("--agent-image-pull-policy %q: use Always, IfNotPresent or Never", pullPolicy)
	}
	if priorityClass != "" {
		if errs := validation.IsDNS1123Subdomain(priorityClass); len(errs) > 0 {
			return fmt.Errorf("--agent-priority-class %q is not a priority class name: %s", priorityClass, strings.Join(errs, "; "))
		}
	}
	resources, err := controllers.ParseAgentResources(agentResources)
	if err != nil {
		return fmt.Errorf("--agent-resources: %w", err)
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&logOpts)))

	scheme, err := newScheme()
	if err != nil {
		return err
	}
	cfg, err := ctrlconfig.GetConfig()
	if err != nil {
		return fmt.Errorf("finding the apiserver: %w", err)
	}
	if priorityClass != "" {
		c, err := client.New(cfg, client.Options{Scheme: scheme})
		if err != nil {
			return fmt.Errorf("creating a client: %w", err)
		}
		if err := checkPriorityClass(ctx, c, priorityClass); err != nil {
			return err
		}
	}
	opts := ctrl.Options{
		Scheme:                  scheme,
		Cache:                   controllers.CacheOptions(watchNamespace),
		Metrics:                 metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress:  probeAddr,
		LeaderElection:          leaderElect,
		LeaderElectionID:        "lbpair-manager.lbpair.io",
		LeaderElectionNamespace: leaderNamespace,
		// The manager exits when its context ends, so it can hand the
		// lease over at once instead of making a new leader wait it out.
		LeaderElectionReleaseOnCancel: true,
	}
	mgr, err := ctrl.NewManager(cfg, opts)
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}
	r := &controllers.LoadBalancerPairReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  mgr.GetEventRecorder("lbpair-manager"),
		Agent: controllers.AgentSettings{
			Image:             agentImage,
			ImagePullPolicy:   corev1.PullPolicy(pullPolicy),
			Resources:         resources,
			PriorityClassName: priorityClass,
			ImagePullSecrets:  pullSecrets,
		},
		WatchNamespace: watchNamespace,
	}
	if err := r.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the controller: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	ctrl.Log.Info("Starting the manager", "watchNamespace", watchNamespace, "agentImage", agentImage, "leaderElection", leaderElect)
	return mgr.Start(ctx)
}

// checkPriorityClass refuses an --agent-priority-class that names no
// PriorityClass: the apiserver would refuse every agent pod of it, and as the
// agents' DaemonSets roll by deleting a running agent before creating its
// replacement, every pair would lose an agent on the next rollout. When the
// manager may not read PriorityClasses (the RBAC of an older install), it
// warns and goes on rather than refusing a class that may well exist.
func checkPriorityClass(ctx context.Context, c client.Reader, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := c.Get(ctx, client.ObjectKey{Name: name}, &schedulingv1.PriorityClass{})
	switch {
	case err == nil:
		return nil
	case apierrors.IsNotFound(err):
		return fmt.Errorf("--agent-priority-class %q (the chart's agentPriorityClassName): the cluster has no PriorityClass of that name, and the apiserver would refuse the agents' pods; `kubectl get priorityclasses` lists them", name)
	case apierrors.IsForbidden(err):
		ctrl.Log.Info("Warning: cannot check that the agents' priority class exists, as the manager may not read PriorityClasses: upgrade its RBAC", "priorityClass", name, "error", err.Error())
		return nil
	default:
		return fmt.Errorf("looking up --agent-priority-class %q: %w", name, err)
	}
}

// newScheme holds the Kubernetes types the manager reads and writes, and ours.
func newScheme() (*runtime.Scheme, error) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := lbv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	return scheme, nil
}
