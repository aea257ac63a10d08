package lvmthin

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// A healthy 1 GiB pool of 64 KiB chunks, as dmsetup printed it in the
// test VM, with the fixture's fill levels (768/16384 = 4.69% data).
const poolStatusRW = "0 2097152 thin-pool 3 110/1024 768/16384 - rw discard_passdown error_if_no_space - 256\n"

const dmStatus = "dmsetup status vgcap-pool-tpool"

func TestParseThinPoolStatus(t *testing.T) {
	for _, tc := range []struct {
		name, out   string
		want        ThinPoolStatus
		healthy, ok bool
	}{
		{name: "healthy", out: poolStatusRW, ok: true, healthy: true,
			want: ThinPoolStatus{Transaction: 3, UsedMetadataBlocks: 110, TotalMetadataBlocks: 1024, UsedDataBlocks: 768, TotalDataBlocks: 16384, Mode: "rw", ErrorIfNoSpace: true}},
		{name: "no low watermark (older kernels)", out: "0 2097152 thin-pool 3 110/1024 768/16384 - rw discard_passdown queue_if_no_space -", ok: true, healthy: true,
			want: ThinPoolStatus{Transaction: 3, UsedMetadataBlocks: 110, TotalMetadataBlocks: 1024, UsedDataBlocks: 768, TotalDataBlocks: 16384, Mode: "rw"}},
		{name: "needs check", out: "0 2097152 thin-pool 3 110/1024 768/16384 - rw discard_passdown error_if_no_space needs_check 256", ok: true,
			want: ThinPoolStatus{Transaction: 3, UsedMetadataBlocks: 110, TotalMetadataBlocks: 1024, UsedDataBlocks: 768, TotalDataBlocks: 16384, Mode: "rw", ErrorIfNoSpace: true, NeedsCheck: true}},
		{name: "out of data", out: "0 2097152 thin-pool 9 300/1024 16384/16384 - out_of_data_space discard_passdown error_if_no_space - 256", ok: true,
			want: ThinPoolStatus{Transaction: 9, UsedMetadataBlocks: 300, TotalMetadataBlocks: 1024, UsedDataBlocks: 16384, TotalDataBlocks: 16384, Mode: "out_of_data_space", ErrorIfNoSpace: true}},
		{name: "metadata read-only", out: "0 2097152 thin-pool 9 1024/1024 900/16384 - ro discard_passdown error_if_no_space - 256", ok: true,
			want: ThinPoolStatus{Transaction: 9, UsedMetadataBlocks: 1024, TotalMetadataBlocks: 1024, UsedDataBlocks: 900, TotalDataBlocks: 16384, Mode: "ro", ErrorIfNoSpace: true}},
		{name: "fail mode", out: "0 2097152 thin-pool Fail", ok: true, want: ThinPoolStatus{Mode: "Fail"}},
		{name: "not a pool", out: "0 204800 thin 0 -"},
		{name: "two targets", out: poolStatusRW + poolStatusRW},
		{name: "truncated", out: "0 2097152 thin-pool 3 110/1024"},
		{name: "used above total", out: "0 2097152 thin-pool 3 110/1024 20000/16384 - rw discard_passdown error_if_no_space - 256"},
		{name: "not numbers", out: "0 2097152 thin-pool 3 a/b 768/16384 - rw discard_passdown error_if_no_space - 256"},
		{name: "empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseThinPoolStatus([]byte(tc.out))
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if got != tc.want || got.healthy() != tc.healthy {
				t.Errorf("got %+v (healthy %v), want %+v (healthy %v)", got, got.healthy(), tc.want, tc.healthy)
			}
		})
	}
}

func TestDMName(t *testing.T) {
	if got := DMName("my-vg", "thin-pool", "tpool"); got != "my--vg-thin--pool-tpool" {
		t.Errorf("DMName = %q", got)
	}
	if got := mapperPath("vg", "v-1"); got != "/dev/mapper/vg-v--1" {
		t.Errorf("mapperPath = %q", got)
	}
}

// warmBackend is fakeBackend with a healthy pool status scripted, after
// one call that lists the VG and keeps the result.
func warmBackend(t *testing.T) (*Backend, *command.Fake) {
	t.Helper()
	b, f := fakeBackend(t, string(readFixture(t, "lvs-vg.json")))
	f.On(dmStatus, poolStatusRW, 0, "")
	for _, cmd := range []string{"lvcreate", "lvextend", "lvremove"} {
		f.On("lvm "+cmd, "", 0, "")
	}
	if _, err := b.ExpandVolume(context.Background(), fixtureVol, 256<<20); err != nil {
		t.Fatal(err)
	}
	if got := f.Lines(); len(got) != 1 || !strings.HasPrefix(got[0], lvsPrefix+" vgcap") {
		t.Fatalf("first call ran %q, want one lvs of the VG", got)
	}
	f.Calls = nil
	return b, f
}

// TestLVCacheSavesTheLvs: after one lvs, each change runs the pool's
// status and its own LVM command only, and the cache follows the
// changes it made (a create is found again, a delete is gone).
func TestLVCacheSavesTheLvs(t *testing.T) {
	b, f := warmBackend(t)
	c := context.Background()
	newID, cloneID, snapID := backend.VolumeIDFor("new"), backend.VolumeIDFor("clone"), backend.SnapshotIDFor("snap")
	steps := []struct {
		name string
		call func() error
		want []string // command prefixes, in order
	}{
		{"create", func() error {
			_, err := b.CreateVolume(c, backend.VolumeRequest{ID: newID, RequiredBytes: 100 << 20})
			return err
		}, []string{dmStatus, "lvm lvcreate --type thin --virtualsize 104857600b --thinpool pool --name " + newID}},
		{"create again: answered from the cache", func() error {
			v, err := b.CreateVolume(c, backend.VolumeRequest{ID: newID, RequiredBytes: 100 << 20})
			if err == nil && v.SizeBytes != 100<<20 {
				t.Errorf("size %d", v.SizeBytes)
			}
			return err
		}, []string{dmStatus}},
		{"same ID, other size", func() error {
			_, err := b.CreateVolume(c, backend.VolumeRequest{ID: newID, RequiredBytes: 200 << 20})
			if !errors.Is(err, backend.ErrExists) {
				t.Errorf("err = %v, want ErrExists", err)
			}
			return nil
		}, []string{dmStatus}},
		{"clone of the new volume", func() error {
			_, err := b.CreateVolume(c, backend.VolumeRequest{ID: cloneID, Source: backend.Source{Kind: backend.SourceVolume, ID: newID}})
			return err
		}, []string{dmStatus, "lvm lvcreate --snapshot --name " + cloneID}},
		{"snapshot of the clone", func() error {
			s, err := b.CreateSnapshot(c, backend.SnapshotRequest{ID: snapID, SourceVolumeID: cloneID})
			if err == nil && s.SizeBytes != 100<<20 {
				t.Errorf("snapshot size %d", s.SizeBytes)
			}
			return err
		}, []string{dmStatus, "lvm lvcreate --snapshot --name " + snapID}},
		{"expand the clone", func() error {
			_, err := b.ExpandVolume(c, cloneID, 200<<20)
			return err
		}, []string{dmStatus, "lvm lvextend --size 209715200b vgcap/" + cloneID}},
		{"expand again: nothing to do", func() error {
			v, err := b.ExpandVolume(c, cloneID, 200<<20)
			if err == nil && v.SizeBytes != 200<<20 {
				t.Errorf("size %d", v.SizeBytes)
			}
			return err
		}, []string{dmStatus}},
		{"delete the clone", func() error { return b.DeleteVolume(c, cloneID) },
			[]string{dmStatus, "lvm lvremove --yes vgcap/" + cloneID}},
		{"delete it again", func() error { return b.DeleteVolume(c, cloneID) }, []string{dmStatus}},
		{"expand the deleted clone", func() error {
			if _, err := b.ExpandVolume(c, cloneID, 300<<20); !errors.Is(err, backend.ErrNotFound) {
				t.Errorf("err = %v, want ErrNotFound", err)
			}
			return nil
		}, []string{dmStatus}},
	}
	for _, step := range steps {
		if err := step.call(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		got := f.Lines()
		f.Calls = nil
		if len(got) != len(step.want) {
			t.Errorf("%s: ran %q, want %q", step.name, got, step.want)
			continue
		}
		for i := range got {
			if !strings.HasPrefix(got[i], step.want[i]) {
				t.Errorf("%s: command %d is %q, want %q...", step.name, i, got[i], step.want[i])
			}
		}
	}
	fresh, err := b.scan(c) // the fixture, plus what this test made
	if err != nil {
		t.Fatal(err)
	}
	if got, want := b.cache.state.provisioned-fresh.provisioned, int64(100<<20+100<<20); got != want {
		t.Errorf("cache provisions %d bytes more than the fixture, want %d (new volume and snapshot)", got, want)
	}
}

// TestLVCacheFallsBackToLvs: the cache is not used when it is old,
// when the kernel's view of the pool is unusable, and it is replaced by a
// fresh lvs when LVM contradicts it.
func TestLVCacheFallsBackToLvs(t *testing.T) {
	c := context.Background()
	create := func(b *Backend, name string) error {
		_, err := b.CreateVolume(c, backend.VolumeRequest{ID: backend.VolumeIDFor(name), RequiredBytes: 100 << 20})
		return err
	}
	lvsVG := lvsPrefix + " vgcap"
	for _, tc := range []struct {
		name    string
		prepare func(*Backend, *command.Fake)
		wantErr error
		want    []string
	}{
		{name: "list older than ListMaxAge", prepare: func(b *Backend, _ *command.Fake) { b.cache.listedAt = time.Now().Add(-time.Hour) },
			want: []string{lvsVG, "lvm lvcreate"}},
		{name: "pool out of data space", prepare: func(_ *Backend, f *command.Fake) {
			f.On(dmStatus, "0 2097152 thin-pool 9 300/1024 16384/16384 - out_of_data_space discard_passdown error_if_no_space - 256", 0, "")
		}, want: []string{dmStatus, lvsVG, "lvm lvcreate"}},
		{name: "pool needs a check", prepare: func(_ *Backend, f *command.Fake) {
			f.On(dmStatus, "0 2097152 thin-pool 3 110/1024 768/16384 - rw discard_passdown error_if_no_space needs_check 256", 0, "")
		}, want: []string{dmStatus, lvsVG, "lvm lvcreate"}},
		{name: "no thin-pool device", prepare: func(_ *Backend, f *command.Fake) {
			f.On(dmStatus, "", 1, "Device does not exist.")
		}, want: []string{dmStatus, lvsVG, "lvm lvcreate"}},
		{name: "fill levels are fresh: the guard refuses without an lvs", prepare: func(_ *Backend, f *command.Fake) {
			f.On(dmStatus, "0 2097152 thin-pool 9 110/1024 15000/16384 - rw discard_passdown error_if_no_space - 256", 0, "")
		}, wantErr: backend.ErrNoSpace, want: []string{dmStatus}},
		{name: "metadata fill is fresh too", prepare: func(_ *Backend, f *command.Fake) {
			f.On(dmStatus, "0 2097152 thin-pool 9 900/1024 768/16384 - rw discard_passdown error_if_no_space - 256", 0, "")
		}, wantErr: backend.ErrNoSpace, want: []string{dmStatus}},
		{name: "an LV made behind the driver's back: lvcreate says it exists, a fresh lvs shows it is not ours",
			prepare: func(_ *Backend, f *command.Fake) {
				report := strings.ReplaceAll(string(readFixture(t, "lvs-vg.json")), `"foreign"`, `"`+backend.VolumeIDFor("x")+`"`)
				f.On(lvsVG, report, 0, "")
				f.On("lvm lvcreate", "", 5, strings.TrimSpace(string(readFixture(t, "lvcreate-exists.stderr"))))
			}, wantErr: backend.ErrPrecondition, want: []string{dmStatus, "lvm lvcreate", lvsVG}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, f := warmBackend(t)
			tc.prepare(b, f)
			err := create(b, "x")
			if !errors.Is(err, tc.wantErr) || (err != nil && tc.wantErr == nil) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			got := f.Lines()
			if len(got) != len(tc.want) {
				t.Fatalf("ran %q, want %q", got, tc.want)
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tc.want[i]) {
					t.Errorf("command %d is %q, want %q...", i, got[i], tc.want[i])
				}
			}
		})
	}
}
