// Package fresh is a client whose reads of chosen kinds come from the
// informer cache yet never return an object older than this process's own
// last write of it.
//
// The controller's steps are driven by a CR's status and its assignment: a
// copy from before the step the last reconcile took would take that step
// again (a second assignment, a sync started twice). Reading those kinds
// from the apiserver on every reconcile was correct but cost two GETs per
// reconcile, most of a sync's API requests at scale. The cache is behind
// only when this process has just written the object and the watch has not
// brought the write yet; so each write's resourceVersion is remembered, and
// a read whose cached copy is older than it (resource versions compare as
// integers, k8s.io/apimachinery/pkg/util/resourceversion) goes to the
// apiserver instead. Writes by others arrive through the watch, which is
// also what enqueues the reconcile that reads them. A deletion the object
// outlives (a finalizer) is not tracked: its response is not returned, and
// a read that misses its timestamp asks again, which is harmless.
package fresh

import (
	"context"
	"fmt"
	"reflect"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Client reads the tracked kinds from the cache unless its own last write
// of the object is newer than the cache's copy; everything else passes
// through to the embedded client.
type Client struct {
	client.Client
	// api reads from the apiserver.
	api     client.Reader
	tracked map[reflect.Type]bool

	mu      sync.Mutex
	written map[key]string // resourceVersion of this process's last write, until the cache has it
}

type key struct {
	kind reflect.Type
	obj  client.ObjectKey
}

// New wraps cached (the manager's client) with api (its API reader) for the
// kinds of the objects given.
func New(cached client.Client, api client.Reader, kinds ...client.Object) *Client {
	c := &Client{Client: cached, api: api, tracked: map[reflect.Type]bool{}, written: map[key]string{}}
	for _, k := range kinds {
		c.tracked[reflect.TypeOf(k)] = true
	}
	return c
}

// Get reads obj from the cache, or from the apiserver when the cache has
// not yet seen this process's last write of it.
func (c *Client) Get(ctx context.Context, k client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	err := c.Client.Get(ctx, k, obj, opts...)
	if !c.tracked[reflect.TypeOf(obj)] {
		return err
	}
	if !c.behind(key{reflect.TypeOf(obj), k}, obj, err) {
		return err
	}
	if err := c.api.Get(ctx, k, obj, opts...); err != nil {
		if apierrors.IsNotFound(err) {
			c.forget(key{reflect.TypeOf(obj), k})
		}
		return fmt.Errorf("read past the cache: %w", err)
	}
	return nil
}

func (c *Client) forget(k key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.written, k)
}

// behind says whether the cache's answer (obj, err) predates the last write
// of k; once the cache has caught up the write is forgotten.
func (c *Client) behind(k key, obj client.Object, err error) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	wrote, ok := c.written[k]
	if !ok {
		return false
	}
	if err != nil {
		// Not in the cache yet (created), or a cache error: the
		// apiserver decides.
		return true
	}
	if cmp, cerr := resourceversion.CompareResourceVersion(obj.GetResourceVersion(), wrote); cerr != nil || cmp < 0 {
		return true
	}
	delete(c.written, k)
	return false
}

// wrote records obj's resourceVersion after a write of it succeeded.
func (c *Client) wrote(obj client.Object, err error) error {
	if err != nil || !c.tracked[reflect.TypeOf(obj)] || obj.GetResourceVersion() == "" {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.written[key{reflect.TypeOf(obj), client.ObjectKeyFromObject(obj)}] = obj.GetResourceVersion()
	return nil
}

// Create creates obj and remembers its version.
func (c *Client) Create(ctx context.Context, obj client.Object, opts ...client.CreateOption) error {
	return c.wrote(obj, c.Client.Create(ctx, obj, opts...))
}

// Update updates obj and remembers its version.
func (c *Client) Update(ctx context.Context, obj client.Object, opts ...client.UpdateOption) error {
	return c.wrote(obj, c.Client.Update(ctx, obj, opts...))
}

// Patch patches obj and remembers its version.
func (c *Client) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
	return c.wrote(obj, c.Client.Patch(ctx, obj, patch, opts...))
}

// Status writes the status subresource and remembers the versions written.
func (c *Client) Status() client.SubResourceWriter {
	return subresource{SubResourceWriter: c.Client.Status(), c: c}
}

type subresource struct {
	client.SubResourceWriter
	c *Client
}

func (s subresource) Update(ctx context.Context, obj client.Object, opts ...client.SubResourceUpdateOption) error {
	return s.c.wrote(obj, s.SubResourceWriter.Update(ctx, obj, opts...))
}

func (s subresource) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
	return s.c.wrote(obj, s.SubResourceWriter.Patch(ctx, obj, patch, opts...))
}
