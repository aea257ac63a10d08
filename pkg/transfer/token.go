package transfer

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/transfer/pki"
)

// A transfer is authorised by a token the controller signs with its
// ed25519 key; node agents hold only the public key, so an agent can check
// a token but not make one (a compromised node cannot authorise itself to
// pull another node's data). A token binds one transfer: its ID, the
// snapshot and parent sent, the source node that serves it, the target
// node that may pull it, and an expiry at most MaxTokenLifetime after it
// was issued; its random ID makes it good for one use (UsedTokens).
//
// Wire form: "v1." + base64url(claims JSON) + "." + base64url(signature),
// the signature over tokenContext + the claims JSON as sent.

const (
	// MaxTokenLifetime bounds a token's expiry after its issue time, and
	// so how long the source must remember its ID.
	MaxTokenLifetime = time.Hour
	tokenPrefix      = "v1."
	tokenContext     = "csi-thin.io transfer token v1\n"
	maxTokenLen      = 4096
)

var (
	tokenIDPattern    = regexp.MustCompile(`^[0-9a-f]{32}$`)
	transferIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
)

// Claims is what a token authorises.
type Claims struct {
	// ID is the token's own random ID (32 hex digits): one use each.
	ID string `json:"jti"`
	// Transfer names the transfer (e.g. the target volume's ID); a retry
	// of the same transfer gets a new token.
	Transfer string `json:"transfer"`
	Snapshot string `json:"snapshot"`
	// Parent is the snapshot an incremental stream is relative to; empty
	// for a full stream.
	Parent   string `json:"parent,omitempty"`
	Source   string `json:"source"`
	Target   string `json:"target"`
	IssuedAt int64  `json:"iat"`
	Expires  int64  `json:"exp"`
}

// ExpiresAt is Expires as a time.
func (c Claims) ExpiresAt() time.Time { return time.Unix(c.Expires, 0) }

// check validates the claims' form (not the signature or expiry).
func (c Claims) check() error {
	if !tokenIDPattern.MatchString(c.ID) {
		return fmt.Errorf("token ID %q: not 32 hex digits", c.ID)
	}
	if !transferIDPattern.MatchString(c.Transfer) {
		return fmt.Errorf("transfer ID %q: 1-128 of [A-Za-z0-9._-]", c.Transfer)
	}
	if err := backend.CheckSnapshotID(c.Snapshot); err != nil {
		return err
	}
	if c.Parent != "" {
		if err := backend.CheckSnapshotID(c.Parent); err != nil {
			return fmt.Errorf("parent: %w", err)
		}
		if c.Parent == c.Snapshot {
			return errors.New("a snapshot cannot be its own parent")
		}
	}
	for _, n := range []string{c.Source, c.Target} {
		if err := pki.CheckNodeName(n); err != nil {
			return err
		}
	}
	if c.Source == c.Target {
		return fmt.Errorf("source and target are both %s", c.Source)
	}
	if c.Expires <= c.IssuedAt || time.Duration(c.Expires-c.IssuedAt)*time.Second > MaxTokenLifetime {
		return fmt.Errorf("lifetime %ds: not within (0, %s]", c.Expires-c.IssuedAt, MaxTokenLifetime)
	}
	return nil
}

// Issuer mints tokens (the controller).
type Issuer struct{ key ed25519.PrivateKey }

// NewIssuer mints tokens with key.
func NewIssuer(key ed25519.PrivateKey) *Issuer { return &Issuer{key: key} }

// Mint signs a token for c (its ID, IssuedAt and Expires are set here:
// issued now, valid for ttl).
func (i *Issuer) Mint(c Claims, now time.Time, ttl time.Duration) (string, Claims, error) {
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", c, err
	}
	c.ID = hex.EncodeToString(id[:])
	c.IssuedAt = now.Unix()
	c.Expires = now.Add(ttl).Unix()
	if err := c.check(); err != nil {
		return "", c, fmt.Errorf("mint token: %w", err)
	}
	body, err := json.Marshal(c)
	if err != nil {
		return "", c, err
	}
	sig := ed25519.Sign(i.key, append([]byte(tokenContext), body...))
	enc := base64.RawURLEncoding
	return tokenPrefix + enc.EncodeToString(body) + "." + enc.EncodeToString(sig), c, nil
}

// Verifier checks tokens against the controller's public keys (more than
// one while the key rotates).
type Verifier struct{ keys []ed25519.PublicKey }

// NewVerifier trusts tokens signed by any of keys.
func NewVerifier(keys ...ed25519.PublicKey) *Verifier { return &Verifier{keys: keys} }

// Verify returns a token's claims once its signature, form and expiry
// (at now) are good: ErrBadToken or ErrExpired otherwise.
func (v *Verifier) Verify(token string, now time.Time) (Claims, error) {
	body, sig, c, err := parseToken(token)
	if err != nil {
		return c, err
	}
	signed := append([]byte(tokenContext), body...)
	ok := false
	for _, k := range v.keys {
		if len(k) == ed25519.PublicKeySize && ed25519.Verify(k, signed, sig) {
			ok = true
			break
		}
	}
	if !ok {
		return Claims{}, fmt.Errorf("%w: signature not by the controller's key", ErrBadToken)
	}
	if err := c.check(); err != nil {
		return c, fmt.Errorf("%w: %w", ErrBadToken, err)
	}
	if !now.Before(c.ExpiresAt()) {
		return c, fmt.Errorf("%w at %s (now %s)", ErrExpired, c.ExpiresAt().UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return c, nil
}

// ParseUnverified reads a token's claims without checking its signature:
// the target uses it to learn which node must serve the transfer (the
// source checks the token).
func ParseUnverified(token string) (Claims, error) {
	_, _, c, err := parseToken(token)
	if err != nil {
		return c, err
	}
	if err := c.check(); err != nil {
		return c, fmt.Errorf("%w: %w", ErrBadToken, err)
	}
	return c, nil
}

func parseToken(token string) (body, sig []byte, c Claims, err error) {
	if len(token) > maxTokenLen {
		return nil, nil, c, fmt.Errorf("%w: %d bytes", ErrBadToken, len(token))
	}
	rest, ok := strings.CutPrefix(token, tokenPrefix)
	b64body, b64sig, ok2 := strings.Cut(rest, ".")
	if !ok || !ok2 {
		return nil, nil, c, fmt.Errorf("%w: not a v1 token", ErrBadToken)
	}
	enc := base64.RawURLEncoding
	if body, err = enc.DecodeString(b64body); err != nil {
		return nil, nil, c, fmt.Errorf("%w: claims: %w", ErrBadToken, err)
	}
	if sig, err = enc.DecodeString(b64sig); err != nil || len(sig) != ed25519.SignatureSize {
		return nil, nil, c, fmt.Errorf("%w: signature encoding", ErrBadToken)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, nil, Claims{}, fmt.Errorf("%w: claims: %w", ErrBadToken, err)
	}
	return body, sig, c, nil
}
