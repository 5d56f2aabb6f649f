package destination

import (
	"context"
	"fmt"
	"net"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
	volsyncv1alpha1 "github.com/ferrysync/ferry/pkg/api/v1alpha1"
	"github.com/ferrysync/ferry/pkg/controller/takeover"
)

// serviceName is the Service sources connect to, named as VolSync names it
// (so that Ferry takes over VolSync's, with its address).
func serviceName(rd *volsyncv1alpha1.ReplicationDestination) string {
	return takeover.ShortName("volsync-rsync-dst-", rd.Name)
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
