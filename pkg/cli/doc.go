// Package cli is kubectl ferry, the plugin a platform team reaches for on
// day two: pair a source claim in one cluster with a destination in
// another (keys and address carried across, in place of the spec's manual
// Secret copy), trigger a sync and watch it move, see the replications of
// both clusters in one table, and restore a claim from a destination's
// latest image. It speaks only the VolSync API (the CRs and their status),
// so it works against any controller that serves it.
//
// Each command fetches, decides with a pure function (the CRs pair makes,
// a status row, a progress line: table-tested) and acts.
package cli
