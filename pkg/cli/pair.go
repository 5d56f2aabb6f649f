package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
)

// pairOptions are pair's flags.
type pairOptions struct {
	// name is the two CRs' name (default: the claim's).
	name string
	// schedule is the source's cron schedule; empty: one sync now, then
	// each `kubectl ferry sync`.
	schedule string
	// copyMethod is the source's point-in-time copy; destCopyMethod what
	// the destination keeps (Snapshot: a VolumeSnapshot per sync).
	copyMethod, destCopyMethod string
	serviceType                string
	// storageClass is the replica's (default: the cluster's default).
	storageClass string
	rotateKeys   bool
	dryRun       bool
	timeout      time.Duration
}

// ManagedBy labels what kubectl ferry made, so that a person can tell.
const ManagedBy = "kubectl-ferry"

// initialTrigger is the manual trigger of a source paired without a
// schedule: it syncs once, at pairing.
const initialTrigger = "paired"

func newPairCommand(o *options) *cobra.Command {
	p := pairOptions{}
	cmd := &cobra.Command{
		Use:   "pair CLAIM",
		Short: "Replicate a claim into a new replica in the destination's cluster",
		Long: "pair creates a ReplicationDestination sized and shaped like CLAIM in the destination's\n" +
			"namespace, an ssh key pair whose halves it writes as a Secret on each side, waits for the\n" +
			"destination's address, and creates the ReplicationSource that replicates CLAIM there.\n" +
			"Running it again changes nothing; --rotate-keys replaces the key pair on both sides.",
		Example: "  kubectl ferry pair mysql-pv-claim -n source --to-context dr --to-namespace dest --schedule '*/5 * * * *'",
		Args:    cobra.ExactArgs(1),
		RunE:    func(cmd *cobra.Command, args []string) error { return o.pair(cmd.Context(), args[0], p) },
	}
	f := cmd.Flags()
	f.StringVar(&p.name, "name", "", "name of the ReplicationSource and ReplicationDestination (default: the claim's)")
	f.StringVar(&p.schedule, "schedule", "", "the source's cron schedule (default: none; sync with kubectl ferry sync)")
	f.StringVar(&p.copyMethod, "copy-method", string(volsyncv1alpha1.CopyMethodSnapshot), "the source's point-in-time copy: Snapshot, Clone or Direct")
	f.StringVar(&p.destCopyMethod, "dest-copy-method", string(volsyncv1alpha1.CopyMethodSnapshot), "what the destination keeps of each sync: Snapshot or Direct")
	f.StringVar(&p.serviceType, "service-type", string(corev1.ServiceTypeClusterIP), "the destination's Service: ClusterIP or LoadBalancer")
	f.StringVar(&p.storageClass, "storage-class", "", "the replica's storage class (default: the cluster's default)")
	f.BoolVar(&p.rotateKeys, "rotate-keys", false, "replace the ssh key pair on both sides")
	f.BoolVar(&p.dryRun, "dry-run", false, "print the objects pair would write (keys redacted) and write nothing")
	f.DurationVar(&p.timeout, "timeout", 2*time.Minute, "how long to wait for the destination's address")
	return cmd
}

// pairing is what pair writes: the two CRs and the key Secrets' name (the
// same on both sides).
type pairing struct {
	destination *volsyncv1alpha1.ReplicationDestination
	source      *volsyncv1alpha1.ReplicationSource
	keys        string
}

// planPair decides the CRs for claim pvc and a destination in namespace
// dstNS; the source's address comes from the destination's status later
// (withAddress).
func planPair(pvc *corev1.PersistentVolumeClaim, dstNS string, p pairOptions) (pairing, error) {
	name := p.name
	if name == "" {
		name = pvc.Name
	}
	srcMethod, dstMethod := volsyncv1alpha1.CopyMethodType(p.copyMethod), volsyncv1alpha1.CopyMethodType(p.destCopyMethod)
	switch {
	case srcMethod != volsyncv1alpha1.CopyMethodSnapshot && srcMethod != volsyncv1alpha1.CopyMethodClone && !srcMethod.IsDirect():
		return pairing{}, fmt.Errorf("--copy-method %q: use Snapshot, Clone or Direct", p.copyMethod)
	case dstMethod != volsyncv1alpha1.CopyMethodSnapshot && !dstMethod.IsDirect():
		return pairing{}, fmt.Errorf("--dest-copy-method %q: use Snapshot or Direct", p.destCopyMethod)
	case p.serviceType != string(corev1.ServiceTypeClusterIP) && p.serviceType != string(corev1.ServiceTypeLoadBalancer):
		return pairing{}, fmt.Errorf("--service-type %q: use ClusterIP or LoadBalancer", p.serviceType)
	}
	size, ok := pvc.Status.Capacity[corev1.ResourceStorage]
	if !ok {
		if size, ok = pvc.Spec.Resources.Requests[corev1.ResourceStorage]; !ok {
			return pairing{}, fmt.Errorf("claim %s/%s has no size to give the replica", pvc.Namespace, pvc.Name)
		}
	}
	keys := keySecretName(name)
	labels := map[string]string{"app.kubernetes.io/managed-by": ManagedBy}
	rd := &volsyncv1alpha1.ReplicationDestination{
		TypeMeta:   metav1.TypeMeta{APIVersion: volsyncv1alpha1.GroupVersion.String(), Kind: "ReplicationDestination"},
		ObjectMeta: metav1.ObjectMeta{Namespace: dstNS, Name: name, Labels: labels},
		Spec: volsyncv1alpha1.ReplicationDestinationSpec{Rsync: &volsyncv1alpha1.ReplicationDestinationRsyncSpec{
			ReplicationDestinationVolumeOptions: volsyncv1alpha1.ReplicationDestinationVolumeOptions{CopyMethod: dstMethod,
				Capacity: ptr.To(size.DeepCopy()), AccessModes: pvc.Spec.AccessModes},
			SSHKeys: ptr.To(keys), ServiceType: ptr.To(corev1.ServiceType(p.serviceType))}}}
	if p.storageClass != "" {
		rd.Spec.Rsync.StorageClassName = ptr.To(p.storageClass)
	}
	trigger := &volsyncv1alpha1.TriggerSpec{Manual: initialTrigger}
	if p.schedule != "" {
		trigger = &volsyncv1alpha1.TriggerSpec{Schedule: ptr.To(p.schedule)}
	}
	rs := &volsyncv1alpha1.ReplicationSource{
		TypeMeta:   metav1.TypeMeta{APIVersion: volsyncv1alpha1.GroupVersion.String(), Kind: "ReplicationSource"},
		ObjectMeta: metav1.ObjectMeta{Namespace: pvc.Namespace, Name: name, Labels: labels},
		Spec: volsyncv1alpha1.ReplicationSourceSpec{SourcePVC: pvc.Name, Trigger: trigger,
			Rsync: &volsyncv1alpha1.ReplicationSourceRsyncSpec{
				ReplicationSourceVolumeOptions: volsyncv1alpha1.ReplicationSourceVolumeOptions{CopyMethod: srcMethod},
				SSHKeys:                        ptr.To(keys)}}}
	return pairing{destination: rd, source: rs, keys: keys}, nil
}

// withAddress points the source at the destination's address and port
// from its status; false while the destination has none yet.
func (p pairing) withAddress(st *volsyncv1alpha1.ReplicationDestinationStatus) bool {
	if st.Rsync == nil || st.Rsync.Address == nil || *st.Rsync.Address == "" {
		return false
	}
	p.source.Spec.Rsync.Address = ptr.To(*st.Rsync.Address)
	p.source.Spec.Rsync.Port = st.Rsync.Port
	return true
}

// keySecretName names the key Secrets of pair name, on either side.
func keySecretName(name string) string { return name + "-ferry-keys" }

// pair fetches the claim, plans, writes the keys and the destination,
// waits for its address and writes the source.
func (o *options) pair(ctx context.Context, claim string, p pairOptions) error {
	s, err := o.sides()
	if err != nil {
		return err
	}
	src, srcNS, dst, dstNS := s.src, s.srcNS, s.dst, s.dstNS
	pvc := &corev1.PersistentVolumeClaim{}
	if err := src.Get(ctx, client.ObjectKey{Namespace: srcNS, Name: claim}, pvc); err != nil {
		return fmt.Errorf("the source claim %s/%s: %w", srcNS, claim, err)
	}
	plan, err := planPair(pvc, dstNS, p)
	if err != nil {
		return err
	}
	if p.dryRun {
		return o.printPlan(ctx, dst, plan)
	}
	what, err := ensureKeys(ctx, src, dst, srcNS, dstNS, plan.keys, p.rotateKeys)
	if err != nil {
		return err
	}
	fmt.Fprintf(o.streams.Out, "secret %s (source %s, destination %s): %s\n", plan.keys, srcNS, dstNS, what)
	if err := o.write(ctx, dst, plan.destination); err != nil {
		return err
	}
	rd := &volsyncv1alpha1.ReplicationDestination{}
	if err := waitFor(ctx, dst, client.ObjectKeyFromObject(plan.destination), rd, o.poll, p.timeout,
		"the destination's address (status.rsync.address)", func(rd *volsyncv1alpha1.ReplicationDestination) bool {
			return plan.withAddress(&rd.Status)
		}); err != nil {
		return err
	}
	fmt.Fprintf(o.streams.Out, "the destination listens on %s:%d\n", *plan.source.Spec.Rsync.Address, ptr.Deref(plan.source.Spec.Rsync.Port, 22))
	return o.write(ctx, src, plan.source)
}

// write creates obj or makes the existing one's spec and labels obj's,
// and says which (unchanged: nothing was written).
func (o *options) write(ctx context.Context, c client.Client, obj client.Object) error {
	have := obj.DeepCopyObject().(client.Object)
	res, err := controllerutil.CreateOrUpdate(ctx, c, have, func() error { return setSpec(have, obj) })
	if err != nil {
		return fmt.Errorf("write %s %s/%s: %w", kindOf(obj), obj.GetNamespace(), obj.GetName(), err)
	}
	fmt.Fprintf(o.streams.Out, "%s %s/%s: %s\n", kindOf(obj), obj.GetNamespace(), obj.GetName(), res)
	return nil
}

// setSpec copies want's spec and labels onto have, the object as read.
func setSpec(have, want client.Object) error {
	labels := have.GetLabels()
	if labels == nil {
		labels = map[string]string{}
	}
	for k, v := range want.GetLabels() {
		labels[k] = v
	}
	have.SetLabels(labels)
	switch h := have.(type) {
	case *volsyncv1alpha1.ReplicationDestination:
		h.Spec = *want.(*volsyncv1alpha1.ReplicationDestination).Spec.DeepCopy()
	case *volsyncv1alpha1.ReplicationSource:
		trigger := h.Spec.Trigger
		h.Spec = *want.(*volsyncv1alpha1.ReplicationSource).Spec.DeepCopy()
		if h.Spec.Trigger.Schedule == nil && trigger != nil {
			// No schedule asked for: the source's trigger is the user's
			// (kubectl ferry sync's manual values); pairing again must not
			// reset it, which would start a sync.
			h.Spec.Trigger = trigger
		}
	default:
		return errors.New("pair writes only ReplicationSources and ReplicationDestinations")
	}
	return nil
}

// kindOf is the lower-case kind kubectl prints.
func kindOf(obj client.Object) string {
	switch obj.(type) {
	case *volsyncv1alpha1.ReplicationDestination:
		return "replicationdestination"
	case *volsyncv1alpha1.ReplicationSource:
		return "replicationsource"
	}
	return "object"
}
