package cli

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/keys"
)

// addressPending stands for the destination's address in a dry run
// before the destination exists.
const addressPending = "<the destination's status.rsync.address>"

// printPlan prints what pair would write, keys redacted: the key Secrets,
// the destination, and the source with the address the destination has
// now (or a placeholder).
func (o *options) printPlan(ctx context.Context, dst client.Client, plan pairing) error {
	rd := &volsyncv1alpha1.ReplicationDestination{}
	err := dst.Get(ctx, client.ObjectKeyFromObject(plan.destination), rd)
	if client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("read the destination: %w", err)
	}
	if err != nil || !plan.withAddress(&rd.Status) {
		plan.source.Spec.Rsync.Address = ptr.To(addressPending)
	}
	objs := []any{
		redactedKeys(plan.destination.Namespace, plan.keys, keys.Destination),
		redactedKeys(plan.source.Namespace, plan.keys, keys.Source),
		plan.destination, plan.source,
	}
	for _, obj := range objs {
		out, err := yaml.Marshal(obj)
		if err != nil {
			return fmt.Errorf("print: %w", err)
		}
		fmt.Fprintf(o.streams.Out, "---\n%s", out)
	}
	return nil
}

// redactedKeys shows a key Secret's fields without their values.
func redactedKeys(namespace, name string, side keys.Side) *corev1.Secret {
	s := &corev1.Secret{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{"app.kubernetes.io/managed-by": ManagedBy}},
		StringData: map[string]string{}}
	for _, f := range side.Fields() {
		s.StringData[f] = "(generated)"
	}
	return s
}
