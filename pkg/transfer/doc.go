// Package transfer is Ferry's data plane: rsync over ssh from node to node,
// wire-compatible with VolSync's rsync mover. Its subpackages each do one
// job: servercmd (what a client may run), confine (rsync shut into its
// volume), endpoint (the destination's ssh server), source (the pushing
// client), rsh (rsync's remote shell over the agent's connection), sshkeys
// (VolSync's key Secrets). This package holds their end-to-end tests:
// fidelity, hostile peers, interop with stock OpenSSH and rsync, random
// changes between syncs and, with the ferryfault build tag, faults at every
// step of a sync (internal/fault).
package transfer
