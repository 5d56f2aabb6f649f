package agent

import (
	"sync"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	agentv1alpha1 "github.com/ferrysync/ferry/pkg/api/agent/v1alpha1"
)

// objects keeps a role's in-process state S of each assignment. State
// belongs to one object (its UID): an assignment deleted and created
// again under the same name starts afresh.
type objects[S any] struct {
	// fresh makes the state of a new object; nil: new(S).
	fresh func(uid types.UID) *S
	mu    sync.Mutex
	m     map[types.NamespacedName]owned[S]
}

type owned[S any] struct {
	uid   types.UID
	state *S
}

// of is the state of this very object, new if the name last belonged to
// another.
func (o *objects[S]) of(ma *agentv1alpha1.MountAssignment) *S {
	key := client.ObjectKeyFromObject(ma)
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m == nil {
		o.m = map[types.NamespacedName]owned[S]{}
	}
	e, ok := o.m[key]
	if !ok || e.uid != ma.UID {
		e = owned[S]{uid: ma.UID, state: new(S)}
		if o.fresh != nil {
			e.state = o.fresh(ma.UID)
		}
		o.m[key] = e
	}
	return e.state
}

// get is the state kept under key (nil: none).
func (o *objects[S]) get(key types.NamespacedName) *S {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.m[key].state
}

// drop forgets key's state if it is still s.
func (o *objects[S]) drop(key types.NamespacedName, s *S) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m[key].state == s {
		delete(o.m, key)
	}
}
