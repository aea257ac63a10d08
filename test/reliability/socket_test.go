package reliability

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/fake"
	"github.com/csi-thin/csi-thin/pkg/controller"
	"github.com/csi-thin/csi-thin/pkg/driver"
	"github.com/csi-thin/csi-thin/pkg/k8s/registration"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// TestSocketIsPrivateFromBirth starts each of the driver's sockets (the
// CSI endpoint and the kubelet registration socket) many times under
// umask 0 (the worst a container runtime can hand it) while a watcher
// stats every entry of the socket directory as fast as it can: no socket
// may ever be seen with group or other permissions, the final socket is
// 0600 and root's, nothing is left beside it, and it is gone after stop.
func TestSocketIsPrivateFromBirth(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	pool := fake.New("n1", backend.GiB)
	cases := []struct {
		name string
		// serve starts a server on sock and returns when ctx ends.
		serve func(ctx context.Context, sock string) error
	}{
		{"CSI endpoint", func(ctx context.Context, sock string) error {
			d, err := driver.New(driver.Config{Endpoint: "unix://" + sock, Identity: driver.NewIdentity(pool.Health, driver.WithController), Controller: controller.New(pool)})
			if err != nil {
				return err
			}
			return d.Run(ctx)
		}},
		{"kubelet registration", func(ctx context.Context, sock string) error {
			r := &registration.Server{DriverName: wellknown.DriverName, Endpoint: "/var/lib/kubelet/plugins/csi-thin.io/csi.sock", Socket: sock}
			return r.Run(ctx)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base, err := os.MkdirTemp("", "sock") // short: unix socket paths are limited
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(base) })
			dir := filepath.Join(base, "plugins_registry")
			checkPrivateFromBirth(t, dir, filepath.Join(dir, "csi-thin.io.sock"), tc.serve)
		})
	}
}

func checkPrivateFromBirth(t *testing.T, dir, sock string, serve func(context.Context, string) error) {
	var seen, exposed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			filepath.Walk(filepath.Dir(dir), func(p string, fi os.FileInfo, err error) error {
				if err == nil && fi.Mode()&os.ModeSocket != 0 {
					seen.Add(1)
					// Reachable by others only if its directory lets them
					// in too: a 0700 directory keeps a socket private.
					parent, perr := os.Stat(filepath.Dir(p))
					if fi.Mode().Perm()&0o077 != 0 && perr == nil && parent.Mode().Perm()&0o077 != 0 {
						exposed.Add(1)
					}
				}
				return nil
			})
		}
	}()
	const starts = 200
	for i := 0; i < starts; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- serve(ctx, sock) }()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			conn, err := net.Dial("unix", sock)
			if err == nil {
				conn.Close()
				break
			}
			select {
			case serr := <-done:
				t.Fatalf("server ended before serving: %v", serr)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("never served (start %d): %v", i, err)
			}
		}
		if i == 0 {
			fi, err := os.Stat(sock)
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 || st.Uid != uint32(os.Geteuid()) {
				t.Errorf("socket mode %v owner %d, want a 0600 socket owned by %d", fi.Mode(), st.Uid, os.Geteuid())
			}
			di, _ := os.Stat(dir)
			if di.Mode().Perm()&0o007 != 0 {
				t.Errorf("socket directory mode %v is open to others", di.Mode())
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		// Serve may still be starting when Run is cancelled; it closes
		// (and so removes) the socket as soon as it sees the stop.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			if _, err := os.Lstat(sock); os.IsNotExist(err) {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("socket still there 5s after stop (start %d): %v", i, err)
			}
		}
	}
	close(stop)
	wg.Wait()
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left beside the socket: %v", entries)
	}
	if exposed.Load() > 0 {
		t.Errorf("a socket was seen %d times with group/other permissions during startup", exposed.Load())
	}
	t.Logf("socket: %d starts under umask 0, %d observations of a socket, %d exposed", starts, seen.Load(), exposed.Load())
}
