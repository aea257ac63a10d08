package transfer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// UsedTokens remembers the IDs of the tokens a source has accepted, on
// disk, until they expire: a token is good for one transfer, also across
// a restart of the source's agent. Each ID is a file <dir>/<token ID>
// holding its expiry, created exclusively (O_EXCL) and synced, with its
// directory, before the stream starts; a second use finds it and is
// ErrReplayed. Files of expired tokens are removed (an expired token is
// refused anyway), so the directory holds at most the tokens of the last
// MaxTokenLifetime.
type UsedTokens struct {
	dir string
	mu  sync.Mutex
}

// OpenUsedTokens uses dir (created 0700 if missing) and removes the
// entries of expired tokens.
func OpenUsedTokens(dir string, now time.Time) (*UsedTokens, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("used tokens: %w", err)
	}
	u := &UsedTokens{dir: dir}
	if err := u.Prune(now); err != nil {
		return nil, err
	}
	return u, nil
}

// Use records c's ID as used; ErrReplayed if it was already.
func (u *UsedTokens) Use(c Claims) error {
	if !tokenIDPattern.MatchString(c.ID) {
		return fmt.Errorf("%w: token ID %q", ErrBadToken, c.ID)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	path := filepath.Join(u.dir, c.ID)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%w: token %s of transfer %s", ErrReplayed, c.ID, c.Transfer)
	}
	if err != nil {
		return fmt.Errorf("record used token: %w", err)
	}
	_, err = f.WriteString(strconv.FormatInt(c.Expires, 10))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(u.dir)
	}
	if err != nil {
		// Not recorded durably: refuse the transfer rather than allow a
		// replay after a crash. The entry stays (it can only refuse).
		return fmt.Errorf("record used token: %w", err)
	}
	return nil
}

// Prune removes the entries of tokens expired at now.
func (u *UsedTokens) Prune(now time.Time) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	entries, err := os.ReadDir(u.dir)
	if err != nil {
		return fmt.Errorf("used tokens: %w", err)
	}
	for _, e := range entries {
		if !tokenIDPattern.MatchString(e.Name()) {
			continue
		}
		path := filepath.Join(u.dir, e.Name())
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		exp, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		// A torn entry (crash while writing) is kept for MaxTokenLifetime
		// by its modification time.
		if err != nil {
			if fi, serr := e.Info(); serr != nil || now.Sub(fi.ModTime()) < MaxTokenLifetime {
				continue
			}
		} else if now.Before(time.Unix(exp, 0)) {
			continue
		}
		if err := os.Remove(path); err != nil {
			klog.ErrorS(err, "remove an expired used-token entry", "tokenID", e.Name())
		}
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
