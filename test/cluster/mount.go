package cluster

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// MountVolume stages and publishes a volume through a node's plugin socket
// the way kubelet does (a filesystem volume, read-only when asked) so a test
// can look at its data, and returns the mount path and the function that
// unpublishes and unstages it. publishContext is the VolumeAttachment's
// attachment metadata for attach-required drivers.
func MountVolume(ctx context.Context, socket, volumeID, workDir string, readOnly bool, publishContext map[string]string) (string, func() error, error) {
	target := filepath.Join(workDir, volumeID, "target")
	unmount, err := MountVolumeAt(ctx, socket, volumeID, filepath.Join(workDir, volumeID, "stage"), target, readOnly, publishContext)
	return target, unmount, err
}

// MountVolumeAt is MountVolume at paths of the caller's choice: kubelet's
// own layout, for a test that plays a pod using the volume.
func MountVolumeAt(ctx context.Context, socket, volumeID, staging, target string, readOnly bool, publishContext map[string]string) (func() error, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", socket, err)
	}
	node := csi.NewNodeClient(conn)
	capability := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volumeID, StagingTargetPath: staging,
		VolumeCapability: capability, PublishContext: publishContext}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("stage %s: %w", volumeID, err)
	}
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: volumeID, StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: capability, Readonly: readOnly, PublishContext: publishContext}); err != nil {
		_, _ = node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: volumeID, StagingTargetPath: staging})
		conn.Close()
		return nil, fmt.Errorf("publish %s: %w", volumeID, err)
	}
	once := func() error {
		if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: volumeID, TargetPath: target}); err != nil {
			return fmt.Errorf("unpublish %s: %w", volumeID, err)
		}
		if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: volumeID, StagingTargetPath: staging}); err != nil {
			return fmt.Errorf("unstage %s: %w", volumeID, err)
		}
		return nil
	}
	unmount := func() error {
		defer conn.Close()
		// As kubelet does, try again for a while: the kernel can report a
		// mount busy for a moment (seen once in CI, with many processes
		// entering new mount namespaces that copy it).
		deadline := time.Now().Add(30 * time.Second)
		for {
			err := once()
			if err == nil || time.Now().After(deadline) {
				return err
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return unmount, nil
}
