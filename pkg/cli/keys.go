package cli

import (
	"bytes"
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/ferrysync/ferry/pkg/controller/keys"
	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
)

// What ensureKeys did.
const (
	keysKept      = "kept"
	keysGenerated = "generated"
	keysRotated   = "rotated"
)

// ensureKeys makes sure the source's and the destination's Secret name
// hold the two halves of one ssh key pair, in the fields VolSync's movers
// read (the destination's private key and the source's public key on one
// side, the reverse on the other). A valid pair is kept unless rotate; a
// missing, broken or mismatched one is replaced by a new pair. The
// destination's half is written first: it must trust the new source key
// before the source uses it (a sync in between fails and is retried).
func ensureKeys(ctx context.Context, src, dst client.Client, srcNS, dstNS, name string, rotate bool) (string, error) {
	srcData, err := readKeys(ctx, src, srcNS, name)
	if err != nil {
		return "", err
	}
	dstData, err := readKeys(ctx, dst, dstNS, name)
	if err != nil {
		return "", err
	}
	valid := matched(srcData, dstData)
	if valid && !rotate {
		return keysKept, nil
	}
	dstKeys, srcKeys, err := sshkeys.Secrets()
	if err != nil {
		return "", fmt.Errorf("generate keys: %w", err)
	}
	if err := writeKeys(ctx, dst, dstNS, name, dstKeys); err != nil {
		return "", err
	}
	if err := writeKeys(ctx, src, srcNS, name, srcKeys); err != nil {
		return "", err
	}
	if valid {
		return keysRotated, nil
	}
	return keysGenerated, nil
}

// matched says whether src and dst are valid halves of one pair.
func matched(src, dst map[string][]byte) bool {
	return src != nil && dst != nil &&
		keys.Check(src, keys.Source) == nil && keys.Check(dst, keys.Destination) == nil &&
		bytes.Equal(src[sshkeys.SourcePublic], dst[sshkeys.SourcePublic]) &&
		bytes.Equal(src[sshkeys.DestinationPublic], dst[sshkeys.DestinationPublic])
}

// readKeys reads a key Secret's data; nil when there is none.
func readKeys(ctx context.Context, c client.Client, namespace, name string) (map[string][]byte, error) {
	s := &corev1.Secret{}
	err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, s)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read key Secret %s/%s: %w", namespace, name, err)
	}
	return s.Data, nil
}

// writeKeys creates or replaces a key Secret's data.
func writeKeys(ctx context.Context, c client.Client, namespace, name string, data map[string][]byte) error {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	if _, err := controllerutil.CreateOrUpdate(ctx, c, s, func() error {
		if s.Labels == nil {
			s.Labels = map[string]string{}
		}
		s.Labels["app.kubernetes.io/managed-by"] = ManagedBy
		s.Data = data
		return nil
	}); err != nil {
		return fmt.Errorf("write key Secret %s/%s: %w", namespace, name, err)
	}
	return nil
}
