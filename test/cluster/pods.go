package cluster

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// AppPod is a pod on a real node that runs script (sh -c) once in the
// application image, with the claim at /data: how the real-node tests
// write and check a volume the way a user's application would.
func AppPod(ns, name, claim, script string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{Name: "app", Image: AppImage, Args: []string{script},
				VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}},
		},
	}
}

// WaitPodSucceeded waits for a pod to end and returns an error, with its
// status, unless it succeeded.
func (c *Cluster) WaitPodSucceeded(ctx context.Context, ns, name string, timeout time.Duration) error {
	pod := &corev1.Pod{}
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if err := c.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, pod); err != nil {
			return false, err
		}
		return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed, nil
	})
	if err == nil && pod.Status.Phase != corev1.PodSucceeded {
		err = fmt.Errorf("pod %s/%s %s", ns, name, pod.Status.Phase)
	}
	if err != nil {
		return fmt.Errorf("%w: %+v", err, pod.Status.ContainerStatuses)
	}
	return nil
}

// PodLogs returns a pod's log, through the apiserver from its node's
// kubelet as kubectl logs reads it.
func (c *Cluster) PodLogs(ctx context.Context, ns, name string) (string, error) {
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return "", fmt.Errorf("cluster: clientset: %w", err)
	}
	raw, err := cs.CoreV1().Pods(ns).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		return "", fmt.Errorf("cluster: logs of %s/%s: %w", ns, name, err)
	}
	return string(raw), nil
}

// Events words a namespace's events, oldest first, one a line: what a
// test that waited in vain shows of why (a claim not bound, a pod not
// scheduled, a volume not mounted).
func (c *Cluster) Events(ctx context.Context, ns string) string {
	list := &corev1.EventList{}
	if err := c.Client.List(ctx, list, client.InNamespace(ns)); err != nil {
		return fmt.Sprintf("cluster: events of %s: %v", ns, err)
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].LastTimestamp.Before(&list.Items[j].LastTimestamp) })
	var b strings.Builder
	for _, e := range list.Items {
		fmt.Fprintf(&b, "%s %s %s/%s: %s\n", e.LastTimestamp.Format(time.TimeOnly), e.Reason, e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Message)
	}
	return b.String()
}
