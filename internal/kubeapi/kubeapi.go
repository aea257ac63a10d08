// Package kubeapi runs a real etcd and kube-apiserver on loopback, with the
// csi-thin CRDs installed, for tests and benchmarks of the Kubernetes side
// (node agents, router, lifecycle controller) without kubelets. The
// binaries come from PATH or from the test cluster's cache
// (/var/cache/k8s-recipe/bin, built by test/cluster/build.sh).
package kubeapi

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// CacheBin is where test/cluster/build.sh leaves the Kubernetes binaries
// unless $K8S_CACHE moves its cache (test/cluster/env.sh).
const CacheBin = "/var/cache/k8s-recipe/bin"

// BinDir is CacheBin, or $K8S_CACHE/bin when the cache was moved.
func BinDir() string {
	if dir := os.Getenv("K8S_CACHE"); dir != "" {
		return filepath.Join(dir, "bin")
	}
	return CacheBin
}

// Binaries finds etcd and kube-apiserver, on PATH first.
func Binaries() (etcd, apiserver string, err error) {
	find := func(name string) (string, error) {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
		p := filepath.Join(BinDir(), name)
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p, nil
		}
		return "", fmt.Errorf("%s not on PATH nor in %s: %w", name, BinDir(), errNoBinaries)
	}
	if etcd, err = find("etcd"); err != nil {
		return "", "", err
	}
	if apiserver, err = find("kube-apiserver"); err != nil {
		return "", "", err
	}
	return etcd, apiserver, nil
}

// Server is a running etcd + kube-apiserver pair.
type Server struct {
	// Config reaches the API server as a cluster admin.
	Config *rest.Config
	// Kubeconfig is a file with the same credentials.
	Kubeconfig string
	// APIServerPID and EtcdPID are the processes (for memory readings).
	APIServerPID, EtcdPID int

	dir   string
	procs []*exec.Cmd
}

// Start runs etcd and kube-apiserver with their state under dir and waits
// until the API server is ready and the CRDs in crdDir are established.
func Start(ctx context.Context, dir, crdDir string) (*Server, error) {
	etcdBin, apiBin, err := Binaries()
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir}
	ok := false
	defer func() {
		if !ok {
			s.Stop()
		}
	}()
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	etcd, err := s.run(etcdBin, "etcd",
		"--data-dir", filepath.Join(dir, "etcd"), "--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL, "--initial-cluster", "default="+peerURL,
		"--unsafe-no-fsync", "--log-level", "warn")
	if err != nil {
		return nil, err
	}
	s.EtcdPID = etcd.Process.Pid
	keyFile, pubFile, err := writeServiceAccountKey(dir)
	if err != nil {
		return nil, err
	}
	token, err := randomHex(16)
	if err != nil {
		return nil, err
	}
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(token+",admin,admin,system:masters\n"), 0o600); err != nil {
		return nil, err
	}
	api, err := s.run(apiBin, "kube-apiserver",
		"--etcd-servers", etcdURL, "--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(ports[2]),
		"--cert-dir", filepath.Join(dir, "certs"), "--token-auth-file", tokens, "--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc", "--service-account-key-file", pubFile,
		"--service-account-signing-key-file", keyFile, "--service-cluster-ip-range", "10.0.0.0/24",
		// Admission plugins that need controllers this setup lacks.
		"--disable-admission-plugins", "ServiceAccount,NamespaceLifecycle")
	if err != nil {
		return nil, err
	}
	s.APIServerPID = api.Process.Pid
	host := "https://127.0.0.1:" + strconv.Itoa(ports[2])
	s.Config = &rest.Config{Host: host, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{Insecure: true}, QPS: 200, Burst: 400}
	s.Kubeconfig = filepath.Join(dir, "kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: %q}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`, host, token)
	if err := os.WriteFile(s.Kubeconfig, []byte(kc), 0o600); err != nil {
		return nil, err
	}
	if err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	if err := installCRDs(ctx, s.Config, crdDir); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

func (s *Server) run(bin, name string, args ...string) (*exec.Cmd, error) {
	logFile, err := os.Create(filepath.Join(s.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group, so a Ctrl-C of the test reaches it through
	// Stop, not half-way.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { _ = cmd.Wait(); logFile.Close() }()
	s.procs = append(s.procs, cmd)
	return cmd, nil
}

// Log returns the tail of a component's log ("etcd" or "kube-apiserver").
func (s *Server) Log(name string) string {
	b, _ := os.ReadFile(filepath.Join(s.dir, name+".log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func (s *Server) waitReady(ctx context.Context) error {
	cfg := rest.CopyConfig(s.Config)
	cfg.Timeout = 2 * time.Second
	rc, err := rest.UnversionedRESTClientFor(withNegotiation(cfg))
	if err != nil {
		return err
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		body, err := rc.Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && string(body) == "ok" {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("kube-apiserver not ready: %v\n%s", err, s.Log("kube-apiserver"))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func withNegotiation(cfg *rest.Config) *rest.Config {
	cfg.APIPath = "/"
	cfg.NegotiatedSerializer = serializer.NewCodecFactory(runtime.NewScheme()).WithoutConversion()
	return cfg
}

// Stop kills the processes (the state directory is the caller's).
func (s *Server) Stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		p := s.procs[i].Process
		_ = syscall.Kill(-p.Pid, syscall.SIGTERM)
	}
	for i := len(s.procs) - 1; i >= 0; i-- {
		p := s.procs[i].Process
		for range 50 {
			if p.Signal(syscall.Signal(0)) != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		_ = syscall.Kill(-p.Pid, syscall.SIGKILL)
	}
	s.procs = nil
}

func installCRDs(ctx context.Context, cfg *rest.Config, dir string) error {
	scheme := runtime.NewScheme()
	if err := apiextensionsv1.AddToScheme(scheme); err != nil {
		return err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("no CRDs in %s: %v", dir, err)
	}
	var names []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.Unmarshal(data, crd); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		if err := c.Create(ctx, crd); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create CRD %s: %w", crd.Name, err)
		}
		names = append(names, crd.Name)
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, name := range names {
		for {
			crd := &apiextensionsv1.CustomResourceDefinition{}
			if err := c.Get(ctx, client.ObjectKey{Name: name}, crd); err != nil {
				return err
			}
			if established(crd) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("CRD %s not established", name)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

func established(crd *apiextensionsv1.CustomResourceDefinition) bool {
	for _, c := range crd.Status.Conditions {
		if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
			return true
		}
	}
	return false
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
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

func writeServiceAccountKey(dir string) (keyFile, pubFile string, err error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", "", err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", "", err
	}
	keyFile, pubFile = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600); err != nil {
		return "", "", err
	}
	return keyFile, pubFile, nil
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

var errNoBinaries = errors.New("kube-apiserver or etcd missing")

// IsMissing reports whether err says the binaries are not installed.
func IsMissing(err error) bool { return errors.Is(err, errNoBinaries) }
