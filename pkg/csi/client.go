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

// Client talks to one CSI node plugin over its unix socket.
type Client struct {
	conn  *grpc.ClientConn
	node  csispec.NodeClient
	stage bool
}

// Dial connects to the node plugin at socket and asks what it can do. gRPC
// reconnects by itself when the plugin restarts, so a Client lives as long
// as the agent.
func Dial(ctx context.Context, socket string, log logr.Logger) (*Client, error) {
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(logCalls(log)))
	if err != nil {
		return nil, fmt.Errorf("connect to CSI node plugin at %s: %w", socket, err)
	}
	c := &Client{conn: conn, node: csispec.NewNodeClient(conn)}
	caps, err := c.node.NodeGetCapabilities(ctx, &csispec.NodeGetCapabilitiesRequest{})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("node capabilities of the plugin at %s: %w", socket, err)
	}
	for _, cp := range caps.GetCapabilities() {
		if cp.GetRpc().GetType() == csispec.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME {
			c.stage = true
		}
	}
	return c, nil
}

// Close drops the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Stages reports whether the plugin wants NodeStageVolume before
// NodePublishVolume.
func (c *Client) Stages() bool { return c.stage }

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
