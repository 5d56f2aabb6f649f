// Package transfer is Ferry's data plane: rsync over ssh from node to node,
// wire-compatible with VolSync's rsync mover. Its subpackages each do one
// job: servercmd (what a client may run), confine (rsync shut into its
// volume), cgroup (each transfer's limits), endpoint (the destination's ssh
// server), sender (the pushing client), rsh (rsync's remote shell over the
// agent's connection), reexec (the helper processes), sshkeys (VolSync's
// key Secrets), compression (the rsync compression setting), keepalive
// (ssh keepalives that end a cut connection), stream (rsync's bytes
// between pipes and ssh channels, with few system calls), treedigest (the tree sums that let an
// unchanged sync be skipped) and internal (the ssh algorithms and exit
// statuses both ends agree on, and fault points).
// This package holds their end-to-end tests:
// fidelity, hostile peers, interop with stock OpenSSH and rsync, random
// changes between syncs and, with the ferryfault build tag, faults at every
// step of a sync (internal/fault).
package transfer
