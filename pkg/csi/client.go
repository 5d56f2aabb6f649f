package csi

import (
	"context"
	"fmt"
	"time"

	csispec "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/go-logr/logr"
	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// DefaultCallTimeout bounds every call to a node plugin, as kubelet bounds
// its own (csiTimeout, pkg/volume/csi/csi_plugin.go, v1.37.2, line 56: two
// minutes): a plugin that hangs fails the publish, which is retried, instead
// of holding a transfer slot for ever.
const DefaultCallTimeout = 2 * time.Minute

// Client talks to one CSI node plugin over its unix socket.
type Client struct {
	conn     *grpc.ClientConn
	node     csispec.NodeClient
	endpoint string
	caps     nodeCaps
}

// nodeCaps are the node capabilities that change how the plugin is called.
type nodeCaps struct {
	// stage: NodeStageVolume before NodePublishVolume.
	stage bool
	// singleNodeMultiWriter: kubelet maps access modes to the CSI 1.5
	// single-node modes for such a plugin (see accessMode).
	singleNodeMultiWriter bool
}

// Dial connects to the node plugin at socket and asks what it can do. Every
// call on the connection is bounded by timeout. gRPC reconnects by itself
// when the plugin restarts at the same socket, so a Client lives as long as
// the plugin keeps its endpoint.
func Dial(ctx context.Context, socket string, timeout time.Duration, log logr.Logger) (*Client, error) {
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(deadline(timeout), logCalls(log)))
	if err != nil {
		return nil, fmt.Errorf("connect to CSI node plugin at %s: %w", socket, err)
	}
	c := &Client{conn: conn, node: csispec.NewNodeClient(conn), endpoint: socket}
	caps, err := c.node.NodeGetCapabilities(ctx, &csispec.NodeGetCapabilitiesRequest{})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("node capabilities of the plugin at %s: %w", socket, err)
	}
	for _, cp := range caps.GetCapabilities() {
		switch cp.GetRpc().GetType() {
		case csispec.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME:
			c.caps.stage = true
		case csispec.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER:
			c.caps.singleNodeMultiWriter = true
		}
	}
	return c, nil
}

// Close drops the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Stages reports whether the plugin wants NodeStageVolume before
// NodePublishVolume.
func (c *Client) Stages() bool { return c.caps.stage }

// deadline gives every call at most timeout, unless its context ends
// sooner.
func deadline(timeout time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// logCalls logs every CSI call (at V(4)) with its request and response
// stripped of secrets, and how long it took, the way csi-lib-utils does for
// kubelet's sidecars: the stage and publish secrets never reach a log. A
// failed call is logged the same way, not as an error: the error is
// returned, wrapped with context, and whoever handles it reports it once.
func logCalls(log logr.Logger) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		start := time.Now()
		err := invoker(ctx, method, req, reply, cc, opts...)
		if v := log.V(4); v.Enabled() {
			kv := []any{"method", method, "request", protosanitizer.StripSecrets(req).String(), "duration", time.Since(start)}
			if err != nil {
				kv = append(kv, "error", err.Error())
			} else {
				kv = append(kv, "response", protosanitizer.StripSecrets(reply).String())
			}
			v.Info("CSI call", kv...)
		}
		return err
	}
}
