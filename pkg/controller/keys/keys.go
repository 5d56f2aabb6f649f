// Package keys keeps the ssh key Secrets of a ReplicationSource or
// ReplicationDestination in VolSync's format: it generates VolSync's three
// Secrets when the user gives none, checks a user's Secret for the fields its
// side needs, and keeps the copy the node agent reads in Ferry's namespace
// (the agent may read Secrets there only).
package keys

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/ferrysync/ferry/pkg/controller/names"
	"github.com/ferrysync/ferry/pkg/transfer/sshkeys"
)

// Side is which end of a replication a Secret serves; each needs its own
// fields.
type Side int

const (
	// Source pushes: its private key and the destination's public key.
	Source Side = iota
	// Destination receives: its private host key and the source's public
	// key (plus its own public key, which VolSync keeps there too).
	Destination
)

// Fields are the Secret fields each side needs, as VolSync's movers read
// them.
func (s Side) Fields() []string {
	if s == Source {
		return []string{sshkeys.SourcePrivate, sshkeys.SourcePublic, sshkeys.DestinationPublic}
	}
	return []string{sshkeys.DestinationPrivate, sshkeys.DestinationPublic, sshkeys.SourcePublic}
}

// ErrInvalid marks a Secret that is missing or lacks a field: the user must
// fix it, retrying does not help.
var ErrInvalid = errors.New("invalid key Secret")

// Check says what is wrong with a user's Secret for side, naming the
// missing fields; nil if nothing is.
func Check(data map[string][]byte, side Side) error {
	var missing []string
	for _, f := range side.Fields() {
		if len(strings.TrimSpace(string(data[f]))) == 0 {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: missing or empty field(s) %s (a %s Secret needs %s)", ErrInvalid,
			strings.Join(missing, ", "), side, strings.Join(side.Fields(), ", "))
	}
	sum := digest(data, side)
	if parsed.has(sum) {
		return nil
	}
	var err error
	if side == Source {
		_, err = sshkeys.ParseSource(data)
	} else {
		_, err = sshkeys.ParseDestination(data)
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	parsed.add(sum)
	return nil
}

// parsed remembers key material that parsed, by digest: parsing a
// 4096-bit RSA key costs milliseconds (its precomputation and
// validation), and every preparation of every CR's keys checked it again;
// at thousands of CRs that was a third of the controller's CPU.
var parsed = &digests{seen: map[[sha256.Size]byte]bool{}}

// digests is a set of digests, emptied when it grows past maxDigests (a
// digest is recomputed then, not trusted stale).
type digests struct {
	mu   sync.Mutex
	seen map[[sha256.Size]byte]bool
}

const maxDigests = 100_000

func (d *digests) has(sum [sha256.Size]byte) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.seen[sum]
}

func (d *digests) add(sum [sha256.Size]byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.seen) >= maxDigests {
		clear(d.seen)
	}
	d.seen[sum] = true
}

// digest identifies the fields side needs, with their values.
func digest(data map[string][]byte, side Side) [sha256.Size]byte {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00", side)
	for _, f := range side.Fields() {
		fmt.Fprintf(h, "%s\x00%d\x00", f, len(data[f]))
		h.Write(data[f])
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

func (s Side) String() string {
	if s == Source {
		return "source"
	}
	return "destination"
}

// Names are the three Secrets VolSync generates for a CR: main (all four
// fields), the one for the source side and the one for the destination
// side. For a ReplicationDestination named n: volsync-rsync-dst-main-n,
// volsync-rsync-dst-src-n (published for the user to copy to the source)
// and volsync-rsync-dst-dest-n; a ReplicationSource's are
// volsync-rsync-src-*-n.
type Names struct{ Main, Source, Destination string }

// NamesFor returns the generated Secrets' names of a CR of side owner.
func NamesFor(owner Side, name string) Names {
	p := "volsync-rsync-dst-"
	if owner == Source {
		p = "volsync-rsync-src-"
	}
	return Names{Main: names.Object(p+"main-", name, ""), Source: names.Object(p+"src-", name, ""),
		Destination: names.Object(p+"dest-", name, "")}
}

// Published is the generated Secret the other side needs, the one named in
// status.rsync.sshKeys.
func (n Names) Published(owner Side) string {
	if owner == Destination {
		return n.Source
	}
	return n.Destination
}

// Generate makes sure the three Secrets exist, owned by owner, and returns
// the data of owner's own side. Keys are generated once (4096-bit RSA, about
// a second) and kept in main; the other two are derived from it, so a
// deleted one comes back with the same keys.
func Generate(ctx context.Context, c client.Client, owner client.Object, side Side) (map[string][]byte, error) {
	names := NamesFor(side, owner.GetName())
	main := &corev1.Secret{}
	err := c.Get(ctx, client.ObjectKey{Namespace: owner.GetNamespace(), Name: names.Main}, main)
	switch {
	case apierrors.IsNotFound(err):
		dst, src, gerr := sshkeys.Secrets()
		if gerr != nil {
			return nil, gerr
		}
		main = newSecret(owner, names.Main, map[string][]byte{
			sshkeys.SourcePrivate: src[sshkeys.SourcePrivate], sshkeys.SourcePublic: src[sshkeys.SourcePublic],
			sshkeys.DestinationPrivate: dst[sshkeys.DestinationPrivate], sshkeys.DestinationPublic: dst[sshkeys.DestinationPublic]})
		if err := setOwner(owner, main, c); err != nil {
			return nil, err
		}
		if err := c.Create(ctx, main); err != nil {
			return nil, fmt.Errorf("create key Secret %s: %w", names.Main, err)
		}
	case err != nil:
		return nil, fmt.Errorf("get key Secret %s: %w", names.Main, err)
	}
	for _, part := range []struct {
		name string
		side Side
	}{{names.Source, Source}, {names.Destination, Destination}} {
		data := pick(main.Data, part.side.Fields())
		if err := ensure(ctx, c, owner, part.name, data); err != nil {
			return nil, err
		}
	}
	return pick(main.Data, side.Fields()), nil
}

// Mirror keeps a copy of data, only the fields side needs, as Secret name in
// Ferry's namespace, where the agent reads it. It carries labels (who it
// belongs to) instead of an owner reference, which cannot cross
// namespaces; the caller deletes it with the CR.
func Mirror(ctx context.Context, c client.Client, namespace, name string, labels map[string]string, data map[string][]byte, side Side) error {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	_, err := controllerutil.CreateOrUpdate(ctx, c, s, func() error {
		s.Labels = labels
		s.Type = corev1.SecretTypeOpaque
		s.Data = pick(data, side.Fields())
		return nil
	})
	if err != nil {
		return fmt.Errorf("copy keys to %s/%s: %w", namespace, name, err)
	}
	return nil
}

// Delete removes a Secret; one already gone is fine.
func Delete(ctx context.Context, c client.Client, namespace, name string) error {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	if err := c.Delete(ctx, s); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete Secret %s/%s: %w", namespace, name, err)
	}
	return nil
}

// Read returns a user's Secret's data, checked for side; a missing Secret
// or field is ErrInvalid with a message that names it.
func Read(ctx context.Context, c client.Reader, namespace, name string, side Side) (map[string][]byte, error) {
	s := &corev1.Secret{}
	err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, s)
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: Secret %s/%s named in spec.rsync.sshKeys does not exist: create it (for a source, copy the destination's status.rsync.sshKeys Secret)",
			ErrInvalid, namespace, name)
	}
	if err != nil {
		return nil, fmt.Errorf("get key Secret %s/%s: %w", namespace, name, err)
	}
	if err := Check(s.Data, side); err != nil {
		return nil, fmt.Errorf("key Secret %s/%s (spec.rsync.sshKeys): %w", namespace, name, err)
	}
	return pick(s.Data, side.Fields()), nil
}

func ensure(ctx context.Context, c client.Client, owner client.Object, name string, data map[string][]byte) error {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: owner.GetNamespace(), Name: name}}
	_, err := controllerutil.CreateOrUpdate(ctx, c, s, func() error {
		s.Type = corev1.SecretTypeOpaque
		s.Data = data
		return setOwner(owner, s, c)
	})
	if err != nil {
		return fmt.Errorf("write key Secret %s: %w", name, err)
	}
	return nil
}

func newSecret(owner client.Object, name string, data map[string][]byte) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: owner.GetNamespace(), Name: name},
		Type: corev1.SecretTypeOpaque, Data: data}
}

func setOwner(owner, obj client.Object, c client.Client) error {
	if err := controllerutil.SetControllerReference(owner, obj, c.Scheme()); err != nil {
		return fmt.Errorf("own Secret %s: %w", obj.GetName(), err)
	}
	return nil
}

func pick(data map[string][]byte, fields []string) map[string][]byte {
	out := make(map[string][]byte, len(fields))
	for k, v := range data {
		if slices.Contains(fields, k) {
			out[k] = v
		}
	}
	return out
}

// Copy is where an owner's keys are mirrored for the agent (Mirror): a
// Secret in Ferry's namespace, labelled with the owner.
type Copy struct {
	Namespace, Name string
	Labels          map[string]string
}

// Prepare is both kinds' key step: it reads the user's Secret when the CR
// names one (user), else generates VolSync's, and mirrors the keys of side
// for the agent. It returns what status.rsync.sshKeys says: the generated
// Secret the other side needs, nil when the keys are the user's own. A
// user's Secret that is missing or incomplete is ErrInvalid, for either
// kind the same.
func Prepare(ctx context.Context, c client.Client, owner client.Object, user *string, side Side, to Copy) (*string, error) {
	var data map[string][]byte
	var published *string
	var err error
	if user != nil {
		data, err = Read(ctx, c, owner.GetNamespace(), *user, side)
	} else {
		data, err = Generate(ctx, c, owner, side)
		name := NamesFor(side, owner.GetName()).Published(side)
		published = &name
	}
	if err != nil {
		return nil, err
	}
	if err := Mirror(ctx, c, to.Namespace, to.Name, to.Labels, data, side); err != nil {
		return nil, err
	}
	return published, nil
}

// Recent remembers, per CR, that its keys were prepared a moment ago, so
// that the reconciles of a sync in flight (each report of the agent's
// causes one) do not read and mirror the same Secrets each time: at scale
// those reads were the largest share of a sync's API requests. A changed
// spec prepares again at once; a user's Secret changed meanwhile is picked
// up within Every, as Secrets are not watched (--key-refresh-interval).
type Recent struct {
	// Every is how long a preparation holds.
	Every time.Duration
	// Now is the clock.
	Now func() time.Time

	mu   sync.Mutex
	done map[types.UID]prepared
}

type prepared struct {
	generation int64
	at         time.Time
	published  *string
}

// Prepare runs prepare (Prepare for owner) unless owner's last one, at its
// generation, holds; it returns what that says status.rsync.sshKeys is.
func (r *Recent) Prepare(owner client.Object, prepare func() (*string, error)) (*string, error) {
	now := r.Now()
	r.mu.Lock()
	p, ok := r.done[owner.GetUID()]
	r.mu.Unlock()
	if ok && p.generation == owner.GetGeneration() && now.Sub(p.at) < r.Every {
		return p.published, nil
	}
	published, err := prepare()
	if err != nil {
		r.Forget(owner.GetUID())
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done == nil {
		r.done = map[types.UID]prepared{}
	}
	r.done[owner.GetUID()] = prepared{generation: owner.GetGeneration(), at: now, published: published}
	return published, nil
}

// Forget drops what is remembered of a CR: it is gone, or its keys must be
// looked at again.
func (r *Recent) Forget(uid types.UID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.done, uid)
}
