package s3test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
)

// The server answers S3 for its identity only, and every socket it listens
// on is bound to 127.0.0.1: the tests' traffic never leaves loopback.
func TestServerLoopbackOnly(t *testing.T) {
	s := ForTest(t)
	ctx := context.Background()
	if ok, err := s.Client.BucketExists(ctx, s.Bucket); err != nil || !ok {
		t.Fatalf("BucketExists(%s) = %v, %v", s.Bucket, ok, err)
	}
	if _, err := s.Client.PutObject(ctx, s.Bucket, "k", bytes.NewReader([]byte("v")), 1, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	obj, err := s.Client.GetObject(ctx, s.Bucket, "k", minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(obj); err != nil || string(b) != "v" {
		t.Fatalf("read back %q, %v", b, err)
	}

	listening, err := listeningAddrs(s.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if len(listening) == 0 {
		t.Fatal("found no listening socket of weed")
	}
	for _, a := range listening {
		if !strings.HasPrefix(a, "127.0.0.1:") {
			t.Errorf("weed listens on %s, not on loopback", a)
		}
	}
	t.Logf("weed listens on %v", listening)
}

// listeningAddrs lists the TCP addresses (ip:port) that process pid
// listens on: its socket inodes matched against /proc/net/tcp{,6}.
func listeningAddrs(pid int) ([]string, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name()))
		if err == nil && strings.HasPrefix(target, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")] = true
		}
	}
	var out []string
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "0A" || !inodes[fields[9]] { // 0A: LISTEN
				continue
			}
			addr, err := decodeAddr(fields[1])
			if err != nil {
				f.Close()
				return nil, err
			}
			out = append(out, addr)
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// decodeAddr turns /proc/net/tcp's "0100007F:1F90" into "127.0.0.1:8080"
// (IPv6 addresses are returned in their raw hex, never loopback-prefixed).
func decodeAddr(s string) (string, error) {
	ipHex, portHex, ok := strings.Cut(s, ":")
	port, err := strconv.ParseUint(portHex, 16, 16)
	if !ok || err != nil {
		return "", fmt.Errorf("bad address %q", s)
	}
	if len(ipHex) != 8 {
		return "[" + ipHex + "]:" + strconv.Itoa(int(port)), nil
	}
	ip, err := strconv.ParseUint(ipHex, 16, 32)
	if err != nil {
		return "", fmt.Errorf("bad address %q", s)
	}
	// Little-endian on the architectures this runs on.
	return fmt.Sprintf("%d.%d.%d.%d:%d", ip&0xff, ip>>8&0xff, ip>>16&0xff, ip>>24, port), nil
}

// A weed that dies before its S3 API answers (as it does when a port it
// was given was taken meanwhile) is ErrExited, the error ForTest starts
// over on, and not a wait for the whole deadline.
func TestStartReportsEarlyExit(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := Start(ctx, "/bin/false", dir, false)
	if !errors.Is(err, ErrExited) {
		t.Fatalf("Start with a weed that exits at once = %v, want ErrExited", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Start waited for its deadline")
	}
}
