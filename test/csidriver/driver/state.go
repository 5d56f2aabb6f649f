package driver

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// volume is one volume: an ext4 filesystem in a sparse image file.
type volume struct {
	ID       string          `json:"id"`
	Name     string          `json:"name"`
	Size     int64           `json:"size"`
	Node     string          `json:"node,omitempty"` // topology: where it was placed, if anywhere
	Source   string          `json:"source,omitempty"`
	Attached map[string]bool `json:"attached,omitempty"` // node → ControllerPublished
	// Shared: created for access from several nodes (a MULTI_NODE_* mode).
	Shared bool `json:"shared,omitempty"`
	// Staged and Published are where nodes staged and published it.
	Staged    map[string]string   `json:"staged,omitempty"`
	Published map[string][]string `json:"published,omitempty"`
}

// snapshot is a frozen copy of a volume's image.
type snapshot struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	SourceID  string `json:"sourceId"`
	Size      int64  `json:"size"`
	CreatedNS int64  `json:"createdNs"`
}

// state is the driver's metadata, kept in a JSON file beside the images so
// that every "node" of the machine and a restarted driver see the same.
type state struct {
	Volumes   map[string]*volume   `json:"volumes"`
	Snapshots map[string]*snapshot `json:"snapshots"`
	// Nodes are the node IDs of the instances that have started.
	Nodes map[string]bool `json:"nodes"`
}

// store guards the state file; all driver instances on a machine share it
// through the data directory, so every change is read-modify-write under a
// file lock.
type store struct {
	dir string
	mu  sync.Mutex
}

func (s *store) path() string { return filepath.Join(s.dir, "state.json") }

// update runs fn on the current state under an exclusive lock and saves
// the result when fn returns no error.
func (s *store) update(fn func(*state) error) error {
	return s.locked(fn, true)
}

// view runs fn on the current state under the lock, without saving.
func (s *store) view(fn func(*state) error) error {
	return s.locked(fn, false)
}

func (s *store) locked(fn func(*state) error, save bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	unlock, err := lockFile(filepath.Join(s.dir, "state.lock"))
	if err != nil {
		return err
	}
	defer unlock()
	st := &state{Volumes: map[string]*volume{}, Snapshots: map[string]*snapshot{}, Nodes: map[string]bool{}}
	raw, err := os.ReadFile(s.path())
	switch {
	case err == nil:
		if err := json.Unmarshal(raw, st); err != nil {
			return fmt.Errorf("parse state: %w", err)
		}
	case !os.IsNotExist(err):
		return fmt.Errorf("read state: %w", err)
	}
	if err := fn(st); err != nil || !save {
		return err
	}
	raw, err = json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	tmp := s.path() + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp, s.path()); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	return nil
}

// lockFile takes an exclusive flock on path and returns its release.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock state: %w", err)
	}
	return func() { _ = f.Close() }, nil
}
