// Package sshkeys reads and makes the ssh keys of VolSync's rsync mover, in
// VolSync's Secret format, so that Secrets copied between VolSync and Ferry
// work on either side.
//
// A key Secret holds RSA keys under four fields: "source" and "source.pub"
// (the pushing side's identity), "destination" and "destination.pub" (the
// receiving side's host key). The destination needs its private host key and
// source.pub (the one key it lets in); the source needs its private key and
// destination.pub (the host key it pins).
package sshkeys

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"fmt"

	"golang.org/x/crypto/ssh"
)

// Secret field names, as VolSync writes them.
const (
	SourcePrivate      = "source"
	SourcePublic       = "source.pub"
	DestinationPrivate = "destination"
	DestinationPublic  = "destination.pub"
)

// rsaBits is the size of generated keys: VolSync generates 4096-bit RSA.
const rsaBits = 4096

// Source is what the pushing side needs.
type Source struct {
	// Identity authenticates the source to the destination.
	Identity ssh.Signer
	// HostKey is the destination's public key, pinned.
	HostKey ssh.PublicKey
}

// Destination is what the receiving side needs.
type Destination struct {
	// HostKey is presented to connecting sources.
	HostKey ssh.Signer
	// Authorized is the one client key allowed in.
	Authorized ssh.PublicKey
}

// ParseSource reads a source's keys from Secret data.
func ParseSource(data map[string][]byte) (*Source, error) {
	id, err := private(data, SourcePrivate)
	if err != nil {
		return nil, err
	}
	hk, err := public(data, DestinationPublic)
	if err != nil {
		return nil, err
	}
	return &Source{Identity: id, HostKey: hk}, nil
}

// ParseDestination reads a destination's keys from Secret data.
func ParseDestination(data map[string][]byte) (*Destination, error) {
	hk, err := private(data, DestinationPrivate)
	if err != nil {
		return nil, err
	}
	auth, err := public(data, SourcePublic)
	if err != nil {
		return nil, err
	}
	return &Destination{HostKey: hk, Authorized: auth}, nil
}

func private(data map[string][]byte, field string) (ssh.Signer, error) {
	raw, ok := data[field]
	if !ok || len(bytes.TrimSpace(raw)) == 0 {
		return nil, fmt.Errorf("key secret: field %q is missing or empty", field)
	}
	s, err := ssh.ParsePrivateKey(raw)
	if err != nil {
		// The parse error never contains key material.
		return nil, fmt.Errorf("key secret: field %q is not an unencrypted ssh private key: %w", field, err)
	}
	return s, nil
}

func public(data map[string][]byte, field string) (ssh.PublicKey, error) {
	raw, ok := data[field]
	if !ok || len(bytes.TrimSpace(raw)) == 0 {
		return nil, fmt.Errorf("key secret: field %q is missing or empty", field)
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey(raw)
	if err != nil {
		return nil, fmt.Errorf("key secret: field %q is not an ssh public key (authorized_keys format): %w", field, err)
	}
	return k, nil
}

// Pair is one generated key pair in the formats VolSync stores.
type Pair struct {
	// Private is an OpenSSH PEM private key.
	Private []byte
	// Public is an authorized_keys line.
	Public []byte
}

// Generate makes a new RSA key pair. It takes around a second: 4096-bit RSA
// is what VolSync generates and what its movers expect.
func Generate() (Pair, error) {
	key, err := rsa.GenerateKey(rand.Reader, rsaBits)
	if err != nil {
		return Pair{}, fmt.Errorf("generate rsa key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(key, "")
	if err != nil {
		return Pair{}, fmt.Errorf("encode private key: %w", err)
	}
	pub, err := ssh.NewPublicKey(&key.PublicKey)
	if err != nil {
		return Pair{}, fmt.Errorf("encode public key: %w", err)
	}
	return Pair{Private: pem.EncodeToMemory(block), Public: ssh.MarshalAuthorizedKey(pub)}, nil
}

// Secrets generates both pairs and returns the data of the destination's
// Secret (destination, destination.pub, source.pub) and of the Secret the
// source needs (source, source.pub, destination.pub), as VolSync lays them
// out.
func Secrets() (destination, source map[string][]byte, err error) {
	src, err := Generate()
	if err != nil {
		return nil, nil, err
	}
	dst, err := Generate()
	if err != nil {
		return nil, nil, err
	}
	destination = map[string][]byte{DestinationPrivate: dst.Private, DestinationPublic: dst.Public, SourcePublic: src.Public}
	source = map[string][]byte{SourcePrivate: src.Private, SourcePublic: src.Public, DestinationPublic: dst.Public}
	return destination, source, nil
}
