package driver

import (
	"context"
	"os"
	"sort"
	"strconv"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// CreateSnapshot freezes a copy of a volume's image, idempotent by name.
func (d *Driver) CreateSnapshot(_ context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" || req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "name and source volume ID are required")
	}
	var snap *snapshot
	err := d.store.update(func(st *state) error {
		for _, s := range st.Snapshots {
			if s.Name == req.GetName() {
				if s.SourceID != req.GetSourceVolumeId() {
					return status.Errorf(codes.AlreadyExists, "snapshot %q exists for another volume", req.GetName())
				}
				snap = s
				return nil
			}
		}
		vol := st.Volumes[req.GetSourceVolumeId()]
		if vol == nil {
			return status.Errorf(codes.NotFound, "volume %q not found", req.GetSourceVolumeId())
		}
		id := idFor("snap-", req.GetName())
		if err := copyImage(d.imagePath(vol.ID), d.snapshotPath(id)); err != nil {
			return status.Errorf(codes.Internal, "copy image: %v", err)
		}
		snap = &snapshot{ID: id, Name: req.GetName(), SourceID: vol.ID, Size: vol.Size, CreatedNS: time.Now().UnixNano()}
		st.Snapshots[id] = snap
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &csi.CreateSnapshotResponse{Snapshot: snap.csi()}, nil
}

func (s *snapshot) csi() *csi.Snapshot {
	return &csi.Snapshot{SnapshotId: s.ID, SourceVolumeId: s.SourceID, SizeBytes: s.Size,
		CreationTime: timestamppb.New(time.Unix(0, s.CreatedNS)), ReadyToUse: true}
}

// DeleteSnapshot removes a snapshot; an unknown one is already gone.
func (d *Driver) DeleteSnapshot(_ context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot ID is required")
	}
	err := d.store.update(func(st *state) error {
		if err := os.Remove(d.snapshotPath(req.GetSnapshotId())); err != nil && !os.IsNotExist(err) {
			return status.Errorf(codes.Internal, "remove snapshot: %v", err)
		}
		delete(st.Snapshots, req.GetSnapshotId())
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// ListSnapshots pages through snapshots in ID order; the token is an index.
func (d *Driver) ListSnapshots(_ context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	var all []*snapshot
	_ = d.store.view(func(st *state) error {
		for _, s := range st.Snapshots {
			if (req.GetSnapshotId() == "" || s.ID == req.GetSnapshotId()) &&
				(req.GetSourceVolumeId() == "" || s.SourceID == req.GetSourceVolumeId()) {
				all = append(all, s)
			}
		}
		return nil
	})
	sort.Slice(all, func(i, j int) bool { return all[i].ID < all[j].ID })
	start := 0
	if tok := req.GetStartingToken(); tok != "" {
		n, err := strconv.Atoi(tok)
		if err != nil || n < 0 || n > len(all) {
			return nil, status.Errorf(codes.Aborted, "invalid starting token %q", tok)
		}
		start = n
	}
	end := len(all)
	if m := int(req.GetMaxEntries()); m > 0 && start+m < end {
		end = start + m
	}
	resp := &csi.ListSnapshotsResponse{}
	for _, s := range all[start:end] {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: s.csi()})
	}
	if end < len(all) {
		resp.NextToken = strconv.Itoa(end)
	}
	return resp, nil
}
