// Package s3test starts a real S3 server for tests: SeaweedFS's `weed`
// (built once per version by test/s3/build.sh into a cache outside the
// clone), listening on loopback only, with its data in a temporary
// directory, one identity (access key + secret key) and one bucket.
package s3test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/csi-thin/csi-thin/internal/testenv"
)

// CacheDir is where test/s3/build.sh leaves `weed`, one directory per version,
// unless $SEAWEEDFS_CACHE moves it.
const CacheDir = "/var/cache/csi-thin/seaweedfs"

// versionKey is the line of hack/versions.env that pins SeaweedFS.
const versionKey = "SEAWEEDFS_VERSION"

var errNoBinary = errors.New("run test/s3/build.sh (or make s3-build) to build it")

// Server is a running SeaweedFS with its S3 gateway on loopback.
type Server struct {
	// Endpoint is host:port of the S3 API (plain HTTP on 127.0.0.1).
	Endpoint string
	// AccessKey and SecretKey are the one identity the server knows (admin
	// on every bucket).
	AccessKey, SecretKey string
	// Bucket exists when ForTest returns.
	Bucket string
	// Client is an S3 client for the identity, for tests that look at or
	// tamper with the objects behind the code under test.
	Client *minio.Client
	// CACert (PEM) signed the server's certificate when it serves HTTPS
	// (ForTestTLS); nil for plain HTTP.
	CACert []byte

	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// Binary finds `weed`: $SEAWEEDFS_WEED if set, else the cache entry of the
// version that hack/versions.env pins.
func Binary() (string, error) {
	if p := os.Getenv("SEAWEEDFS_WEED"); p != "" {
		return p, nil
	}
	version, err := pinnedVersion()
	if err != nil {
		return "", err
	}
	cache := CacheDir
	if dir := os.Getenv("SEAWEEDFS_CACHE"); dir != "" {
		cache = dir // test/s3/build.sh's override
	}
	p := filepath.Join(cache, version, "weed")
	if st, err := os.Stat(p); err != nil || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("SeaweedFS %s: no executable %s: %w", version, p, errNoBinary)
	}
	return p, nil
}

// pinnedVersion reads SEAWEEDFS_VERSION's default from hack/versions.env
// of the module the test runs in (the file the build script sources).
func pinnedVersion() (string, error) {
	if v := os.Getenv(versionKey); v != "" {
		return v, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	f, err := os.Open(filepath.Join(root, "hack", "versions.env"))
	if err != nil {
		return "", err
	}
	defer f.Close()
	prefix := versionKey + "=${" + versionKey + ":-"
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); strings.HasPrefix(line, prefix) && strings.HasSuffix(line, "}") {
			return strings.TrimSuffix(strings.TrimPrefix(line, prefix), "}"), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", fmt.Errorf("hack/versions.env has no %s line", versionKey)
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the test's directory")
		}
		dir = parent
	}
}

// ErrExited is Start's error when weed exited before its S3 API was ready
// (e.g. a port it was given was taken in the meantime).
var ErrExited = errors.New("weed exited")

// resetDir empties dir for another start.
func resetDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// ForTest starts a server for one test, stopped (and its data removed) at
// the test's end, with Bucket created. Without the binary it skips the
// test, or fails it when CI=true.
func ForTest(t testing.TB) *Server {
	t.Helper()
	return forTest(t, false)
}

// ForTestTLS is ForTest with the S3 API on HTTPS, its certificate (for
// 127.0.0.1) signed by a CA made for this test (Server.CACert).
func ForTestTLS(t testing.TB) *Server {
	t.Helper()
	return forTest(t, true)
}

func forTest(t testing.TB, tls bool) *Server {
	t.Helper()
	weed, err := Binary()
	if err != nil {
		testenv.Missing(t, err.Error())
	}
	// Unix sockets (the filer's and the S3 gateway's) must fit in 108
	// bytes: a short directory, not t.TempDir's long test-named one.
	dir, err := os.MkdirTemp("", "s3test-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := Start(ctx, weed, dir, tls)
	// The ports were free when chosen, but until weed binds them any
	// other process on the machine may take one (an outgoing connection
	// gets its local port from the same range): weed then exits. New
	// ports, a new start.
	for attempt := 2; errors.Is(err, ErrExited) && attempt <= 3; attempt++ {
		t.Logf("SeaweedFS start %d: %v; again on other ports", attempt-1, err)
		if err = resetDir(dir); err == nil {
			s, err = Start(ctx, weed, dir, tls)
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		t.Fatalf("start SeaweedFS: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("end of the SeaweedFS log %s:\n%s", s.log, tail(s.log, 40))
		}
		s.Stop()
		os.RemoveAll(dir)
	})
	return s
}

// Start runs weed from the binary weed with its data and config in dir,
// waits until its S3 API answers for the identity, and creates a bucket.
// With useTLS the S3 API serves HTTPS with a certificate from a new CA.
func Start(ctx context.Context, weed, dir string, useTLS bool) (*Server, error) {
	return start(ctx, weed, dir, useTLS, "", "127.0.0.1")
}

// StartIn is Start (plain HTTP) with every listener on ip inside the
// network namespace netns (a path such as /var/run/netns/k8s), for a
// server that the pods of a test cluster reach on their node's IP.
func StartIn(ctx context.Context, weed, dir, netns, ip string) (*Server, error) {
	if net.ParseIP(ip) == nil || netns == "" {
		return nil, fmt.Errorf("StartIn: want a network namespace and an IP, got %q and %q", netns, ip)
	}
	return start(ctx, weed, dir, false, netns, ip)
}

func start(ctx context.Context, weed, dir string, useTLS bool, netns, ip string) (*Server, error) {
	s := &Server{
		AccessKey: "csi-thin-" + randomHex(4),
		SecretKey: randomHex(20),
		Bucket:    "csi-thin-test",
		done:      make(chan struct{}),
		log:       filepath.Join(dir, "weed.log"),
	}
	config := map[string]any{"identities": []map[string]any{{
		"name":        "csi-thin-test",
		"credentials": []map[string]string{{"accessKey": s.AccessKey, "secretKey": s.SecretKey}},
		"actions":     []string{"Admin", "Read", "Write", "List", "Tagging"},
	}}}
	configJSON, err := json.Marshal(config)
	if err != nil {
		return nil, err
	}
	configFile := filepath.Join(dir, "s3.json")
	if err := os.WriteFile(configFile, configJSON, 0o600); err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		return nil, err
	}
	// Every listener on loopback, on ports the kernel just handed out:
	// weed otherwise derives gRPC ports as HTTP port + 10000 and opens
	// fixed defaults (Iceberg, Lance) that parallel tests would share.
	ports, err := freePorts(8)
	if err != nil {
		return nil, err
	}
	s.Endpoint = net.JoinHostPort(ip, strconv.Itoa(ports[0]))
	args := []string{
		"server",
		"-ip=" + ip, "-ip.bind=" + ip,
		"-dir=" + data,
		"-master.port=" + strconv.Itoa(ports[1]), "-master.port.grpc=" + strconv.Itoa(ports[2]),
		"-volume.port=" + strconv.Itoa(ports[3]), "-volume.port.grpc=" + strconv.Itoa(ports[4]),
		"-filer.port=" + strconv.Itoa(ports[5]), "-filer.port.grpc=" + strconv.Itoa(ports[6]),
		"-filer.localSocket=" + filepath.Join(dir, "filer.sock"),
		"-s3", "-s3.port=" + strconv.Itoa(ports[0]), "-s3.port.grpc=" + strconv.Itoa(ports[7]),
		"-s3.port.iceberg=0", "-s3.port.lance=0",
		"-s3.localSocket=" + filepath.Join(dir, "s3.sock"),
		"-s3.config=" + configFile,
		// No bucket appears by itself: the tests create theirs.
		"-s3.autoCreateBucket=false",
		// Nothing leaves loopback: no usage report to seaweedfs.com.
		"-master.telemetry=false",
		// Small volumes: the tests store a few hundred MiB at most.
		"-master.volumeSizeLimitMB=256", "-volume.max=16",
	}
	if useTLS {
		ca, cert, key, err := makeCerts()
		if err != nil {
			return nil, err
		}
		certFile, keyFile := filepath.Join(dir, "s3.crt"), filepath.Join(dir, "s3.key")
		if err := os.WriteFile(certFile, cert, 0o600); err != nil {
			return nil, err
		}
		if err := os.WriteFile(keyFile, key, 0o600); err != nil {
			return nil, err
		}
		s.CACert = ca
		args = append(args, "-s3.cert.file="+certFile, "-s3.key.file="+keyFile)
	}
	logFile, err := os.Create(s.log)
	if err != nil {
		return nil, err
	}
	s.cmd = exec.Command(weed, args...)
	if netns != "" {
		// nsenter enters the namespace and execs weed in its place.
		s.cmd = exec.Command("nsenter", append([]string{"--net=" + netns, weed}, args...)...)
	}
	s.cmd.Dir = dir
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", weed, err)
	}
	go func() { _ = s.cmd.Wait(); logFile.Close(); close(s.done) }()

	transport, err := minio.DefaultTransport(useTLS)
	if err != nil {
		s.Stop()
		return nil, err
	}
	if useTLS {
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(s.CACert)
		transport.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	s.Client, err = minio.New(s.Endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Secure:       useTLS,
		Transport:    transport,
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		s.Stop()
		return nil, err
	}
	if err := s.createBucket(ctx); err != nil {
		s.Stop()
		return nil, fmt.Errorf("%w (log: %s)", err, tail(s.log, 20))
	}
	return s, nil
}

// createBucket retries until the gateway, which starts before the filer
// and volume server it writes through, accepts the bucket.
func (s *Server) createBucket(ctx context.Context) error {
	var last error
	for {
		select {
		case <-s.done:
			return fmt.Errorf("%w (%v) before its S3 API was ready; last error: %v", ErrExited, s.cmd.ProcessState, last)
		default:
		}
		// Generous: the first bucket waits for the filer to settle
		// (~10 s), and an attempt cut short only starts that over.
		attempt, cancel := context.WithTimeout(ctx, 30*time.Second)
		last = s.Client.MakeBucket(attempt, s.Bucket, minio.MakeBucketOptions{})
		if last == nil {
			// Buckets are made through the filer; a write proves a volume
			// server took its first volume too.
			_, last = s.Client.PutObject(attempt, s.Bucket, "ready", bytes.NewReader([]byte("ok")), 2, minio.PutObjectOptions{})
			if last == nil {
				last = s.Client.RemoveObject(attempt, s.Bucket, "ready", minio.RemoveObjectOptions{})
			}
		}
		cancel()
		if last == nil {
			return nil
		}
		if code := minio.ToErrorResponse(last).Code; code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists" {
			last = nil
			continue // made by an attempt that timed out: write the probe
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("S3 API on %s not ready: %w", s.Endpoint, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Stop ends weed (SIGTERM, then SIGKILL after 10 s) and waits for it.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
}

// freePorts returns n distinct TCP ports free on 127.0.0.1 (all held
// open together so none is handed out twice).
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
