package transfer

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func newKeys(t *testing.T) (*Issuer, *Verifier) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return NewIssuer(priv), NewVerifier(pub)
}

var goodClaims = Claims{
	Transfer: "v-0123", Snapshot: "s-00000000000000000000000000000001",
	Parent: "s-00000000000000000000000000000002", Source: "node-a", Target: "node-b",
}

// TestTokenVerify: a token verifies with the controller's public key into
// the claims it was minted with; a changed claim or signature, another
// key, an expired or malformed token are each refused with their error;
// claims out of form are not minted.
func TestTokenVerify(t *testing.T) {
	now := time.Now()
	issuer, verifier := newKeys(t)
	strangerIssuer, _ := newKeys(t)
	tok, c, err := issuer.Mint(goodClaims, now, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got, err := verifier.Verify(tok, now)
	if err != nil || got != c || got.Snapshot != goodClaims.Snapshot || got.Target != "node-b" || len(got.ID) != 32 {
		t.Fatalf("Verify = %+v, %v; want %+v", got, err, c)
	}
	if u, err := ParseUnverified(tok); err != nil || u != c {
		t.Fatalf("ParseUnverified = %+v, %v", u, err)
	}
	// The claims part rewritten (target node-c) with the old signature.
	parts := strings.Split(tok, ".")
	body, _ := base64.RawURLEncoding.DecodeString(parts[1])
	forgedBody := strings.Replace(string(body), `"target":"node-b"`, `"target":"node-c"`, 1)
	forged := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(forgedBody)) + "." + parts[2]
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	sig[0] ^= 1
	badSig := parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(sig)
	stranger, _, err := strangerIssuer.Mint(goodClaims, now, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, token string
		at          time.Time
		want        error
	}{
		{"claims changed", forged, now, ErrBadToken},
		{"signature changed", badSig, now, ErrBadToken},
		{"another key", stranger, now, ErrBadToken},
		{"expired", tok, now.Add(time.Minute), ErrExpired},
		{"empty", "", now, ErrBadToken},
		{"no signature", parts[0] + "." + parts[1], now, ErrBadToken},
		{"other version", "v2." + parts[1] + "." + parts[2], now, ErrBadToken},
		{"too long", tok + strings.Repeat("A", maxTokenLen), now, ErrBadToken},
	} {
		if _, err := verifier.Verify(tc.token, tc.at); !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
	// Both keys are trusted while the key rotates.
	_, strangerVerifier := newKeys(t)
	rotating := NewVerifier(append(strangerVerifier.keys, verifier.keys...)...)
	if _, err := rotating.Verify(tok, now); err != nil {
		t.Fatalf("a verifier trusting two keys: %v", err)
	}

	for _, bad := range []struct {
		name string
		edit func(*Claims)
		ttl  time.Duration
	}{
		{"same source and target", func(c *Claims) { c.Target = c.Source }, time.Minute},
		{"snapshot is a volume ID", func(c *Claims) { c.Snapshot = "v-00000000000000000000000000000001" }, time.Minute},
		{"parent is itself", func(c *Claims) { c.Parent = c.Snapshot }, time.Minute},
		{"node name with a slash", func(c *Claims) { c.Target = "node/b" }, time.Minute},
		{"transfer ID with a space", func(c *Claims) { c.Transfer = "a b" }, time.Minute},
		{"lifetime over the maximum", func(c *Claims) {}, MaxTokenLifetime + time.Second},
		{"no lifetime", func(c *Claims) {}, 0},
	} {
		c := goodClaims
		bad.edit(&c)
		if _, _, err := issuer.Mint(c, now, bad.ttl); err == nil {
			t.Errorf("%s: minted", bad.name)
		}
	}
}

// TestUsedTokens: a token ID is accepted once, also by a store reopened on
// the same directory (a restarted agent); entries go once their token
// expired.
func TestUsedTokens(t *testing.T) {
	now := time.Now()
	dir := t.TempDir()
	issuer, _ := newKeys(t)
	_, c, err := issuer.Mint(goodClaims, now, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	u, err := OpenUsedTokens(dir, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Use(c); err != nil {
		t.Fatalf("first use: %v", err)
	}
	if err := u.Use(c); !errors.Is(err, ErrReplayed) {
		t.Fatalf("second use: got %v, want %v", err, ErrReplayed)
	}
	u, err = OpenUsedTokens(dir, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Use(c); !errors.Is(err, ErrReplayed) {
		t.Fatalf("use after reopening: got %v, want %v", err, ErrReplayed)
	}
	if err := u.Use(Claims{ID: "../escape"}); !errors.Is(err, ErrBadToken) {
		t.Fatalf("an ID that is a path: got %v", err)
	}
	// Pruned once expired (a token of a minute is expired after it).
	if _, err := OpenUsedTokens(dir, now.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, c.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("entry of an expired token still there: %v", err)
	}
}

// TestAuthorizeOrder: the source refuses a token for another source, and
// a refused token is not spent: the same token stays good where it
// belongs (only an authorised use records it).
func TestAuthorizeOrder(t *testing.T) {
	now := time.Now()
	issuer, verifier := newKeys(t)
	used, err := OpenUsedTokens(t.TempDir(), now)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{cfg: ServerConfig{Node: "node-x", Tokens: verifier, Now: time.Now}, used: used}
	tok, _, err := issuer.Mint(goodClaims, now, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.authorize("node-b", tok); !errors.Is(err, ErrWrongSource) {
		t.Fatalf("token for node-a at node-x: got %v, want %v", err, ErrWrongSource)
	}
	s.cfg.Node = "node-a"
	if _, err := s.authorize("node-c", tok); !errors.Is(err, ErrWrongTarget) {
		t.Fatalf("token for node-b presented by node-c: got %v, want %v", err, ErrWrongTarget)
	}
	if _, err := s.authorize("node-b", tok); err != nil {
		t.Fatalf("the token where it belongs: %v", err)
	}
	if _, err := s.authorize("node-b", tok); !errors.Is(err, ErrReplayed) {
		t.Fatalf("again: got %v, want %v", err, ErrReplayed)
	}
}
