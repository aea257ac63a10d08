package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// buildTags are the tags every build of the binary uses (Makefile GOTAGS,
// hack/image.sh, the Dockerfile).
const buildTags = "grpcnotrace"

// TestLinkDropsUnusedMethods guards the node plugin's memory: once any
// reachable code calls a method through reflection by a computed name
// (text/template's evalField, reached through golang.org/x/net/trace's
// handlers when gRPC is built without grpcnotrace), the linker keeps every
// exported method of every type in the binary. That was 10 MB of a 45 MB
// binary and ~9 MiB of the node plugin's RSS, because the kernel maps
// nearly all of a binary's pages (docs/performance.md, RSS). The linker
// marks the offending function <ReflectMethod> in its -dumpdep output.
func TestLinkDropsUnusedMethods(t *testing.T) {
	if testing.Short() {
		t.Skip("links the binary")
	}
	root := repoRoot(t)
	for f, re := range map[string]*regexp.Regexp{
		"Makefile":      regexp.MustCompile(`(?m)^GOTAGS\s*:=.*\b` + buildTags + `\b`),
		"hack/image.sh": regexp.MustCompile(`go build .*-tags ` + buildTags + `\b`),
		"Dockerfile":    regexp.MustCompile(`go build .*-tags ` + buildTags + `\b`),
	} {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		if !re.Match(b) {
			t.Errorf("%s does not build with -tags %s", f, buildTags)
		}
	}
	cmd := exec.Command("go", "build", "-tags", buildTags, "-ldflags=-dumpdep", "-o", os.DevNull, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	culprits := map[string]bool{}
	s := bufio.NewScanner(stderr)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		line := s.Text()
		if from, _, ok := strings.Cut(line, " -> "); ok && strings.HasSuffix(from, "<ReflectMethod>") {
			culprits[strings.TrimSuffix(from, " <ReflectMethod>")] = true
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("go build -ldflags=-dumpdep: %v\n%s", err, stdout.String())
	}
	if len(culprits) > 0 {
		t.Errorf("the linker keeps every exported method: reflection by computed name is reachable in %v; find the path with -ldflags=-dumpdep", culprits)
	}
}

func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}
