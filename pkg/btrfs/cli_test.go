package btrfs

import (
	"context"
	"os"
	"reflect"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/command"
)

func TestParseQgroups(t *testing.T) {
	fixture, err := os.ReadFile("testdata/qgroup-show-limited.txt")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		in      string
		want    []qgroup
		wantErr bool
	}{
		{"captured from btrfs-progs 6.2", string(fixture), []qgroup{{ID: "0/258", Referenced: 16384, Exclusive: 16384, MaxReferenced: 104857600, Path: "b"}}, false},
		{"no limit, path with spaces", "Qgroupid Referenced Exclusive Max referenced Max exclusive Path\n-------- ---------- --------- -------------- ------------- ----\n0/257 4096 4096 none none my vol\n",
			[]qgroup{{ID: "0/257", Referenced: 4096, Exclusive: 4096, Path: "my vol"}}, false},
		{"garbage", "ERROR: quota not enabled\n", nil, true},
		{"non-numeric", "0/257 lots 4096 none none x\n", nil, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseQgroups([]byte(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if !tc.wantErr && !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseUsage(t *testing.T) {
	fixture, err := os.ReadFile("testdata/filesystem-df.json")
	if err != nil {
		t.Fatal(err)
	}
	u, err := parseUsage(fixture)
	if err != nil {
		t.Fatal(err)
	}
	if u.Metadata <= 0 || u.System <= 0 {
		t.Fatalf("usage from fixture: %+v", u)
	}
	if _, err := parseUsage([]byte("{not json")); err == nil {
		t.Fatal("garbage parsed")
	}
}

// TestCommandLines pins the exact argument lists: no shell, paths as
// single arguments, sizes in bytes.
func TestCommandLines(t *testing.T) {
	f := &command.Fake{}
	f.On("btrfs", "", 0, "")
	f.On("btrfs property get", "ro=true\n", 0, "")
	c := cli{run: f}
	ctx := context.Background()
	path := "/pool/csi-thin/staging/v-0123 with space"
	steps := []func() error{
		func() error { return c.createSubvolume(ctx, path) },
		func() error { return c.snapshot(ctx, "/pool/src", path) },
		func() error { return c.createQgroup(ctx, "1/257", "/pool") },
		func() error { return c.assignQgroup(ctx, "0/257", "1/257", "/pool") },
		func() error { return c.limitQgroup(ctx, "1/257", 1<<30, "/pool") },
		func() error { return c.limitQgroup(ctx, "0/257", 0, "/pool") },
		func() error { return c.deleteSubvolumeByID(ctx, 258, "/pool") },
		func() error { return c.makeReadOnly(ctx, path) },
		func() error { return c.deleteSubvolume(ctx, path) },
		func() error {
			ro, err := c.isReadOnly(ctx, path)
			if !ro {
				t.Error("read-only not parsed")
			}
			return err
		},
	}
	for _, s := range steps {
		if err := s(); err != nil {
			t.Fatal(err)
		}
	}
	want := [][]string{
		{"subvolume", "create", path},
		{"subvolume", "snapshot", "/pool/src", path},
		{"qgroup", "create", "1/257", "/pool"},
		{"qgroup", "assign", "0/257", "1/257", "/pool"},
		{"qgroup", "limit", "1073741824", "1/257", "/pool"},
		{"qgroup", "limit", "none", "0/257", "/pool"},
		{"subvolume", "delete", "-i", "258", "/pool"},
		{"property", "set", "-ts", path, "ro", "true"},
		{"subvolume", "delete", path},
		{"property", "get", "-ts", path, "ro"},
	}
	if len(f.Calls) != len(want) {
		t.Fatalf("%d calls, want %d: %v", len(f.Calls), len(want), f.Lines())
	}
	for i, w := range want {
		if f.Calls[i].Name != "btrfs" || !reflect.DeepEqual(f.Calls[i].Args, w) {
			t.Errorf("call %d: %v, want btrfs %v", i, f.Calls[i], w)
		}
	}
}

func TestParseSubvolumeList(t *testing.T) {
	out := []byte("ID 256 gen 15 parent 5 top level 5 path csi-thin/volumes/v-1\n" +
		"ID 257 gen 15 parent 256 top level 256 path csi-thin/volumes/v-1/a b\n")
	got, err := parseSubvolumeList(out)
	want := []subvolumeEntry{{ID: 256, Parent: 5, Path: "csi-thin/volumes/v-1"}, {ID: 257, Parent: 256, Path: "csi-thin/volumes/v-1/a b"}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("parsed %+v, %v; want %+v", got, err, want)
	}
	for _, bad := range []string{"ID x gen 1 parent 5 top level 5 path p", "ID 1 gen 1 parent -5 top level 5 path p", "garbage"} {
		if _, err := parseSubvolumeList([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestBadToolOutputIsAnError(t *testing.T) {
	f := &command.Fake{}
	f.On("btrfs property get", "ro=maybe\n", 0, "")
	f.On("btrfs subvolume create", "", 1, "ERROR: cannot create subvolume: No space left on device")
	c := cli{run: f}
	ctx := context.Background()
	if _, err := c.isReadOnly(ctx, "/p"); err == nil {
		t.Error("garbage property accepted")
	}
	err := c.createSubvolume(ctx, "/p")
	if err == nil || command.StderrOf(err) == "" {
		t.Fatalf("failure lost its stderr: %v", err)
	}
}

func TestParseQgroupID(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"0/257", 257, true},
		{"1/257", 1<<48 | 257, true},
		{"1/281474976710655", 1<<48 | (1<<48 - 1), true}, // the largest id the kernel's 48 bits hold
		{"1/281474976710656", 0, false},
		{"65536/1", 0, false},
		{"257", 0, false},
		{"1/", 0, false},
		{"a/1", 0, false},
		{"1/-1", 0, false},
	} {
		got, err := parseQgroupID(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseQgroupID(%q) = %#x, %v; want %#x, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}
