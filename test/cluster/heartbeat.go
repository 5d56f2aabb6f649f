package cluster

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// leaseInterval is how often kubelet renews its node's lease (a quarter of
// its 40-second duration).
const leaseInterval = 10 * time.Second

// heartbeat does for the simulated nodes what kubelet does for a real one:
// reports it Ready once, then renews its lease in kube-node-lease until ctx
// ends, so that kube-controller-manager's node lifecycle controller keeps
// it healthy instead of tainting it unreachable (which placement, as the
// scheduler, avoids). It returns once the first report and lease are in.
func (c *Cluster) heartbeat(ctx context.Context) error {
	for _, n := range c.Nodes {
		if err := c.ReportNodeStatus(ctx, n.Name); err != nil {
			return err
		}
	}
	if err := c.renewLeases(ctx); err != nil {
		return err
	}
	c.nDriver++
	go func() {
		t := time.NewTicker(leaseInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				c.drivers <- nil
				return
			case <-t.C:
				_ = c.renewLeases(ctx) // a missed renewal is the next one's to make up
			}
		}
	}()
	return nil
}

// renewLeases writes every simulated node's lease with the time now.
func (c *Cluster) renewLeases(ctx context.Context) error {
	for _, n := range c.Nodes {
		lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-node-lease", Name: n.Name}}
		now := metav1.NewMicroTime(time.Now())
		err := c.Client.Get(ctx, client.ObjectKeyFromObject(lease), lease)
		switch {
		case err == nil:
			lease.Spec.RenewTime = &now
			err = c.Client.Update(ctx, lease)
		case client.IgnoreNotFound(err) == nil:
			lease.Spec = coordinationv1.LeaseSpec{HolderIdentity: ptr.To(n.Name), LeaseDurationSeconds: ptr.To(int32(40)), RenewTime: &now}
			err = c.Client.Create(ctx, lease)
		}
		if err != nil {
			return fmt.Errorf("cluster: renew the lease of node %s: %w", n.Name, err)
		}
	}
	return nil
}
