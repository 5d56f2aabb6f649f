package destination

import (
	"context"
	"errors"
	"fmt"
	"net"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/assign"
	"github.com/ferrysync/ferry/pkg/controller/cycle"
	"github.com/ferrysync/ferry/pkg/controller/names"
	"github.com/ferrysync/ferry/pkg/controller/takeover"
)

// managedBy marks the EndpointSlices this controller keeps, as the
// EndpointSlice API asks of every controller that writes them.
const managedBy = "controller.ferrysync.io"

// portName names the ssh port on the Service and its EndpointSlice.
const portName = "rsync"

// claimName is the destination volume's claim: spec.rsync.destinationPVC,
// or the one Ferry provisions, named as VolSync names it.
func claimName(rd *volsyncv1alpha1.ReplicationDestination) string {
	if rd.Spec.Rsync != nil && rd.Spec.Rsync.DestinationPVC != nil {
		return *rd.Spec.Rsync.DestinationPVC
	}
	return names.Object("volsync-", rd.Name, "-dst")
}

// serviceName is the Service sources connect to, named as VolSync names it
// (so that Ferry takes over VolSync's, with its address).
func serviceName(rd *volsyncv1alpha1.ReplicationDestination) string {
	return takeover.ShortName("volsync-rsync-dst-", rd.Name)
}

// volume finds or provisions the destination claim and returns its PV once
// bound (nil, with w.waiting set, before).
func (w *work) volume(ctx context.Context) (*corev1.PersistentVolume, error) {
	rd, c := w.rd, w.r.Client
	spec := rd.Spec.Rsync
	name := claimName(rd)
	pvc := &corev1.PersistentVolumeClaim{}
	err := c.Get(ctx, client.ObjectKey{Namespace: rd.Namespace, Name: name}, pvc)
	switch {
	case apierrors.IsNotFound(err) && spec.DestinationPVC != nil:
		return nil, cycle.Invalidf("spec.rsync.destinationPVC %q does not exist in namespace %s: create it, or remove the field and set capacity and accessModes to have one provisioned",
			name, rd.Namespace)
	case apierrors.IsNotFound(err):
		if err := checkClass(ctx, c, spec.StorageClassName); err != nil {
			return nil, err
		}
		pvc = newClaim(rd, name)
		if err := controllerutil.SetControllerReference(rd, pvc, c.Scheme()); err != nil {
			return nil, fmt.Errorf("own claim %s: %w", name, err)
		}
		if err := c.Create(ctx, pvc); err != nil {
			return nil, fmt.Errorf("create claim %s: %w", name, err)
		}
	case err != nil:
		return nil, fmt.Errorf("get claim %s: %w", name, err)
	}
	w.pvc = pvc
	if pvc.DeletionTimestamp != nil {
		// Nothing is mounted from a claim on its way out (one that
		// cleanupTempPVC dropped is provisioned anew once gone).
		w.waiting = fmt.Sprintf("waiting for claim %s, which is being deleted, to go", name)
		return nil, nil
	}
	var prefer string
	if w.ma != nil {
		prefer = w.ma.Spec.NodeName
	}
	bound, err := assign.SelectNode(ctx, c, pvc, prefer)
	if err != nil {
		if errors.Is(err, assign.ErrNoNode) {
			return nil, cycle.Invalid(err)
		}
		return nil, err
	}
	if !bound {
		if err := checkClass(ctx, c, pvc.Spec.StorageClassName); err != nil {
			return nil, err
		}
		w.waiting = fmt.Sprintf("waiting for claim %s to be bound", name)
		return nil, nil
	}
	pv := &corev1.PersistentVolume{}
	if err := c.Get(ctx, client.ObjectKey{Name: pvc.Spec.VolumeName}, pv); err != nil {
		return nil, fmt.Errorf("get volume of claim %s: %w", name, err)
	}
	return pv, nil
}

// newClaim is the claim Ferry provisions from capacity, accessModes,
// storageClassName and volumeMode.
func newClaim(rd *volsyncv1alpha1.ReplicationDestination, name string) *corev1.PersistentVolumeClaim {
	spec := rd.Spec.Rsync
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: rd.Namespace, Name: name},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: spec.AccessModes, StorageClassName: spec.StorageClassName,
			VolumeMode: spec.VolumeMode}}
	if spec.Capacity != nil {
		pvc.Spec.Resources.Requests = corev1.ResourceList{corev1.ResourceStorage: *spec.Capacity}
	}
	return pvc
}

// checkClass says, for a claim that waits, whether its storage class is
// missing: a claim of a class that does not exist is never bound.
func checkClass(ctx context.Context, c client.Reader, name *string) error {
	if name == nil || *name == "" {
		return nil
	}
	err := c.Get(ctx, client.ObjectKey{Name: *name}, &storagev1.StorageClass{})
	if apierrors.IsNotFound(err) {
		return cycle.Invalidf("storage class %q (spec.rsync.storageClassName) does not exist: name an existing StorageClass", *name)
	}
	if err != nil {
		return fmt.Errorf("get storage class %s: %w", *name, err)
	}
	return nil
}

// service keeps the Service sources connect to: no selector (no pod
// serves it), spec.rsync.port (22) forwarded to the agent's port.
func (w *work) service(ctx context.Context) (*corev1.Service, error) {
	rd, c := w.rd, w.r.Client
	spec := rd.Spec.Rsync
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: rd.Namespace, Name: serviceName(rd)}}
	_, err := controllerutil.CreateOrUpdate(ctx, c, svc, func() error {
		for k, v := range spec.ServiceAnnotations {
			if svc.Annotations == nil {
				svc.Annotations = map[string]string{}
			}
			svc.Annotations[k] = v
		}
		svc.Spec.Type = ptr.Deref(spec.ServiceType, corev1.ServiceTypeClusterIP)
		svc.Spec.Selector = nil
		port := ptr.Deref(spec.Port, 22)
		target := port
		if ep := endpointOf(w.ma); ep != nil {
			target = ep.Port
		}
		sp := corev1.ServicePort{Name: portName, Protocol: corev1.ProtocolTCP, Port: port, TargetPort: intstr.FromInt32(target)}
		if len(svc.Spec.Ports) == 1 && svc.Spec.Type != corev1.ServiceTypeClusterIP {
			sp.NodePort = svc.Spec.Ports[0].NodePort // keep the allocated one
		}
		svc.Spec.Ports = []corev1.ServicePort{sp}
		return controllerutil.SetControllerReference(rd, svc, c.Scheme())
	})
	if err != nil {
		return nil, fmt.Errorf("write Service %s: %w", svc.Name, err)
	}
	return svc, nil
}

// endpoints points the Service at the agent's listener, or at nothing
// while the volume is not served.
func (w *work) endpoints(ctx context.Context, svc *corev1.Service) error {
	c := w.r.Client
	es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: svc.Namespace, Name: svc.Name}}
	ep := endpointOf(w.ma)
	addressType := discoveryv1.AddressTypeIPv4
	if ep != nil && net.ParseIP(ep.Address).To4() == nil {
		addressType = discoveryv1.AddressTypeIPv6
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(es), es); err == nil && es.AddressType != addressType {
		// The address type cannot change: start over.
		if err := c.Delete(ctx, es); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("replace EndpointSlice %s: %w", es.Name, err)
		}
		es = &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: svc.Namespace, Name: svc.Name}}
	}
	_, err := controllerutil.CreateOrUpdate(ctx, c, es, func() error {
		if es.Labels == nil {
			es.Labels = map[string]string{}
		}
		es.Labels[discoveryv1.LabelServiceName] = svc.Name
		es.Labels[discoveryv1.LabelManagedBy] = managedBy
		es.AddressType = addressType
		es.Endpoints, es.Ports = nil, nil
		if ep != nil {
			es.Endpoints = []discoveryv1.Endpoint{{Addresses: []string{ep.Address},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}, NodeName: ptr.To(w.ma.Spec.NodeName)}}
			es.Ports = []discoveryv1.EndpointPort{{Name: ptr.To(portName), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(ep.Port)}}
		}
		return controllerutil.SetControllerReference(w.rd, es, c.Scheme())
	})
	if err != nil {
		return fmt.Errorf("write EndpointSlice %s: %w", es.Name, err)
	}
	return nil
}

// endpointOf is where the agent serves the volume, nil while it does not.
func endpointOf(ma *agentv1alpha1.MountAssignment) *agentv1alpha1.Endpoint {
	if ma == nil || ma.Status.Endpoint == nil {
		return nil
	}
	switch ma.Status.Phase {
	case agentv1alpha1.PhaseMounted, agentv1alpha1.PhaseTransferring, agentv1alpha1.PhaseHolding:
		return ma.Status.Endpoint
	}
	return nil
}

// address is where sources reach the Service: its ClusterIP, or its load
// balancer's address ("" while it has none).
func address(svc *corev1.Service) string {
	if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		for _, in := range svc.Status.LoadBalancer.Ingress {
			if in.IP != "" {
				return in.IP
			}
			if in.Hostname != "" {
				return in.Hostname
			}
		}
		return ""
	}
	if svc.Spec.ClusterIP == corev1.ClusterIPNone {
		return ""
	}
	return svc.Spec.ClusterIP
}

// setAddress publishes the Service's address and port in
// status.rsync, and says when a load balancer has given none yet.
func (w *work) setAddress(svc *corev1.Service) {
	st := w.rd.Status.Rsync
	st.Port = ptr.To(svc.Spec.Ports[0].Port)
	st.Address = nil
	if a := address(svc); a != "" {
		st.Address = ptr.To(a)
	} else if w.waiting == "" {
		w.waiting = fmt.Sprintf("waiting for the load balancer to give Service %s an address", svc.Name)
	}
}

// transferring says whether data is moving into the volume now.
func transferring(ma *agentv1alpha1.MountAssignment) bool {
	return ma != nil && ma.Transferring()
}
