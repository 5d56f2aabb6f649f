package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// options are what every command shares: kubectl's own flags for the
// cluster the command works on (the source's, for pair and status), the
// other cluster's (--to-kubeconfig, --to-context, --to-namespace) and the
// output streams.
type options struct {
	streams genericiooptions.IOStreams
	config  *genericclioptions.ConfigFlags
	// toKubeconfig and toContext reach the destination's cluster; both
	// empty: the same cluster as the source.
	toKubeconfig, toContext string
	// toNamespace is the destination's namespace; empty: the source's.
	toNamespace string
	// poll is how often a waiting command reads status again.
	poll time.Duration
}

// NewCommand returns the kubectl ferry command. --kubeconfig, --context and
// -n are kubectl's (cli-runtime's ConfigFlags) and name the source's
// cluster and namespace; pair, status and restore reach the destination's
// with --to-kubeconfig, --to-context and --to-namespace.
func NewCommand(streams genericiooptions.IOStreams) *cobra.Command {
	o := &options{streams: streams, config: genericclioptions.NewConfigFlags(true), poll: 500 * time.Millisecond}
	root := &cobra.Command{
		Use:   "kubectl-ferry",
		Short: "Pair, sync, watch and restore volumes replicated with VolSync's rsync API",
		Long: "kubectl ferry pairs a claim in one cluster with a replica in another, triggers and watches\n" +
			"syncs, shows every replication of both clusters in one table and restores claims from a\n" +
			"destination's latest image. It works with the ReplicationSource and ReplicationDestination\n" +
			"CRs (volsync.backube/v1alpha1) that Ferry serves.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(streams.Out)
	root.SetErr(streams.ErrOut)
	o.config.AddFlags(root.PersistentFlags())
	root.PersistentFlags().StringVar(&o.toKubeconfig, "to-kubeconfig", "", "kubeconfig of the destination's cluster (default: the source's)")
	root.PersistentFlags().StringVar(&o.toContext, "to-context", "", "kubeconfig context of the destination's cluster (default: the source's)")
	root.PersistentFlags().StringVar(&o.toNamespace, "to-namespace", "", "the destination's namespace (default: the source's)")
	root.AddCommand(newPairCommand(o), newSyncCommand(o), newStatusCommand(o), newRestoreCommand(o))
	return root
}

// source is a client of the source's cluster and the namespace to work in.
func (o *options) source() (client.Client, string, error) {
	cfg, err := o.config.ToRESTConfig()
	if err != nil {
		return nil, "", fmt.Errorf("the source's cluster: %w", err)
	}
	ns, _, err := o.config.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return nil, "", fmt.Errorf("the source's namespace: %w", err)
	}
	c, err := newClient(cfg)
	return c, ns, err
}

// sides are both clusters' clients and namespaces.
type sides struct {
	src, dst     client.Client
	srcNS, dstNS string
}

// sides connects to the source's and the destination's clusters.
func (o *options) sides() (sides, error) {
	src, srcNS, err := o.source()
	if err != nil {
		return sides{}, err
	}
	dstNS := o.toNamespace
	if dstNS == "" {
		dstNS = srcNS
	}
	dst := src
	if o.toKubeconfig != "" || o.toContext != "" {
		if dst, err = o.destination(); err != nil {
			return sides{}, err
		}
	}
	return sides{src: src, dst: dst, srcNS: srcNS, dstNS: dstNS}, nil
}

// destination is a client of the destination's cluster, when it is
// another than the source's.
func (o *options) destination() (client.Client, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if o.toKubeconfig != "" {
		rules.ExplicitPath = o.toKubeconfig
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: o.toContext}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("the destination's cluster: %w", err)
	}
	return newClient(cfg)
}
