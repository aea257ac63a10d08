// Package unixsock makes the driver's unix sockets (the CSI endpoint and
// the kubelet registration socket) private to their owner from the moment
// they exist.
package unixsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
)

// ListenPrivate listens on a unix socket at path that is never reachable
// by anyone but its owner, whatever the umask: the socket is bound inside
// a fresh 0700 directory, restricted to 0600, and only then renamed into
// place. (Binding at path and chmod-ing afterwards leaves a window in
// which, under umask 0, any local user could connect and create or
// delete volumes.)
func ListenPrivate(path string) (net.Listener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".sock")
	if err != nil {
		return nil, fmt.Errorf("private socket dir: %w", err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	lis, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// The file will be at path, not tmp: remove it there on Close.
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		lis.Close()
		return nil, fmt.Errorf("restrict socket %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		lis.Close()
		return nil, fmt.Errorf("move socket into place at %s: %w", path, err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		lis.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	return &unlinkOnClose{Listener: lis, path: path, file: fi}, nil
}

// unlinkOnClose removes the socket file on Close, unless it has been
// replaced meanwhile by the socket of a newer listener on the same path.
type unlinkOnClose struct {
	net.Listener
	path string
	file os.FileInfo
	once sync.Once
}

func (l *unlinkOnClose) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() {
		if fi, serr := os.Lstat(l.path); serr != nil || !os.SameFile(fi, l.file) {
			return
		}
		if rerr := os.Remove(l.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
			err = rerr
		}
	})
	return err
}
