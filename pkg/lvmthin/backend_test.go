package lvmthin

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/exec"
)

// Backend flows on exec.Fake, scripted with the captured reports: the
// exact LVM commands each call runs, and the ones it must not run.

const lvsPrefix = "lvm lvs --reportformat json --units b --nosuffix -o lv_name,vg_name,lv_attr,lv_size,pool_lv,origin,lv_tags,data_percent,metadata_percent,lv_health_status,segtype,lv_when_full,discards,chunk_size,lv_time"

func fakeBackend(t *testing.T, vgReport string) (*Backend, *exec.Fake) {
	t.Helper()
	f := &exec.Fake{}
	f.On(lvsPrefix+" vgcap", vgReport, 0, "")
	cfg, err := Config{VG: "vgcap", ThinPool: "pool", NodeName: "n1", Runner: f}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	return &Backend{cfg: cfg, lvm: newLVM(f, ""), extentSize: 4 << 20}, f
}

func mutations(f *exec.Fake) []string {
	var out []string
	for _, l := range f.Lines() {
		if !strings.HasPrefix(l, "lvm lvs ") {
			out = append(out, l)
		}
	}
	return out
}

func TestCreateVolumeRunsOneLvcreate(t *testing.T) {
	b, f := fakeBackend(t, string(readFixture(t, "lvs-vg.json")))
	f.On("lvm lvcreate", "", 0, "")
	id := backend.VolumeIDFor("new")
	vol, err := b.CreateVolume(context.Background(), backend.VolumeRequest{ID: id, Name: "new", RequiredBytes: 100 << 20, FsType: "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	if vol.SizeBytes != 100<<20 || vol.AccessType != backend.AccessMount || vol.Node != "n1" || vol.Condition.Abnormal {
		t.Errorf("volume = %+v", vol)
	}
	m := mutations(f)
	if len(m) != 1 || !strings.HasPrefix(m[0], "lvm lvcreate --type thin --virtualsize 104857600b --thinpool pool --name "+id+" --addtag csi-thin.io/owned --addtag csi-thin.io/kind=volume ") ||
		strings.Contains(m[0], tagCreating) || !strings.HasSuffix(m[0], " vgcap") {
		t.Errorf("commands: %q", m)
	}
}

func TestCreateVolumeExisting(t *testing.T) {
	b, f := fakeBackend(t, string(readFixture(t, "lvs-vg.json")))
	same := backend.VolumeRequest{ID: fixtureVol, RequiredBytes: 256 << 20, AccessType: backend.AccessMount}
	vol, err := b.CreateVolume(context.Background(), same)
	if err != nil || vol.Name != "pvc-one" || vol.CreatedAt.UnixNano() != 1764124429123456789 {
		t.Fatalf("existing = %+v, %v", vol, err)
	}
	for _, req := range []backend.VolumeRequest{
		{ID: fixtureVol, RequiredBytes: 512 << 20},
		{ID: fixtureVol, AccessType: backend.AccessBlock},
		{ID: fixtureVol, Source: backend.Source{Kind: backend.SourceSnapshot, ID: fixtureSnap}},
	} {
		if _, err := b.CreateVolume(context.Background(), req); !errors.Is(err, backend.ErrExists) {
			t.Errorf("%+v: err = %v, want ErrExists", req, err)
		}
	}
	if m := mutations(f); len(m) != 0 {
		t.Errorf("mutations for an existing volume: %q", m)
	}
}

func TestCreateVolumeRefusesForeignLV(t *testing.T) {
	report := strings.ReplaceAll(string(readFixture(t, "lvs-vg.json")), `"foreign"`, `"`+backend.VolumeIDFor("x")+`"`)
	b, f := fakeBackend(t, report)
	_, err := b.CreateVolume(context.Background(), backend.VolumeRequest{ID: backend.VolumeIDFor("x")})
	if !errors.Is(err, backend.ErrPrecondition) {
		t.Fatalf("err = %v, want ErrPrecondition", err)
	}
	if err := b.DeleteVolume(context.Background(), "not-an-id"); err != nil {
		t.Errorf("delete of a malformed ID: %v", err)
	}
	if m := mutations(f); len(m) != 0 {
		t.Errorf("touched an LV csi-thin did not make: %q", m)
	}
}

func TestRestoreLargerIsTwoSteps(t *testing.T) {
	b, f := fakeBackend(t, string(readFixture(t, "lvs-vg.json")))
	f.On("lvm lvcreate", "", 0, "")
	f.On("lvm lvextend", "", 0, "")
	f.On("lvm lvchange", "", 0, "")
	id := backend.VolumeIDFor("restore")
	src := backend.Source{Kind: backend.SourceSnapshot, ID: fixtureSnap}
	vol, err := b.CreateVolume(context.Background(), backend.VolumeRequest{ID: id, RequiredBytes: 512 << 20, Source: src})
	if err != nil || vol.SizeBytes != 512<<20 || vol.Source != src {
		t.Fatalf("restore = %+v, %v", vol, err)
	}
	m := mutations(f)
	if len(m) != 3 ||
		!strings.HasPrefix(m[0], "lvm lvcreate --snapshot --name "+id+" --permission rw --setactivationskip n --activate n ") ||
		!strings.Contains(m[0], "--addtag csi-thin.io/creating") || !strings.HasSuffix(m[0], " vgcap/"+fixtureSnap) ||
		m[1] != "lvm lvextend --size 536870912b vgcap/"+id ||
		m[2] != "lvm lvchange --deltag csi-thin.io/creating vgcap/"+id {
		t.Errorf("commands:\n%s", strings.Join(m, "\n"))
	}

	small, err := b.CreateVolume(context.Background(), backend.VolumeRequest{ID: backend.VolumeIDFor("small"), RequiredBytes: 128 << 20, Source: src})
	if err != nil || small.SizeBytes != 256<<20 {
		t.Errorf("restore asked smaller than its snapshot = %+v, %v; want the snapshot's 256 MiB", small, err)
	}
	_, err = b.CreateVolume(context.Background(), backend.VolumeRequest{ID: backend.VolumeIDFor("half"),
		Source: backend.Source{Kind: backend.SourceVolume, ID: fixtureClone}})
	if !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("clone of a half-made volume: %v, want ErrNotFound", err)
	}
}

// TestCopySizes: a clone or restore gets max(required, source size),
// rounded to extents, and is OutOfRange only when its limit is below the
// source's size (the rule btrfs applies too, backend.ResolveSize).
func TestCopySizes(t *testing.T) {
	src := backend.Source{Kind: backend.SourceSnapshot, ID: fixtureSnap} // 256 MiB
	for _, tc := range []struct {
		name            string
		required, limit int64
		want            int64
		err             error
	}{
		{"nothing asked", 0, 0, 256 << 20, nil},
		{"less asked", 128 << 20, 0, 256 << 20, nil},
		{"one byte less than the source", 256<<20 - 1, 0, 256 << 20, nil},
		{"less asked, limit at the source's size", 128 << 20, 256 << 20, 256 << 20, nil},
		{"more asked, rounded up to the extent", 300<<20 + 1, 0, 304 << 20, nil},
		{"limit below the source", 128 << 20, 200 << 20, 0, backend.ErrOutOfRange},
		{"limit below the source, nothing asked", 0, 255 << 20, 0, backend.ErrOutOfRange},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, f := fakeBackend(t, string(readFixture(t, "lvs-vg.json")))
			f.On("lvm lvcreate", "", 0, "")
			f.On("lvm lvextend", "", 0, "")
			f.On("lvm lvchange", "", 0, "")
			vol, err := b.CreateVolume(context.Background(), backend.VolumeRequest{ID: backend.VolumeIDFor("c"),
				RequiredBytes: tc.required, LimitBytes: tc.limit, Source: src})
			switch {
			case tc.err != nil:
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				if m := mutations(f); len(m) != 0 {
					t.Errorf("ran %q for a refused copy", m)
				}
			case err != nil:
				t.Fatal(err)
			case vol.SizeBytes != tc.want:
				t.Errorf("size %d, want %d", vol.SizeBytes, tc.want)
			}
		})
	}
}

func TestGuardsRefuseWithoutRunningLVM(t *testing.T) {
	full := strings.Replace(string(readFixture(t, "lvs-vg.json")), `"data_percent":"4.69"`, `"data_percent":"91.00"`, 1)
	b, f := fakeBackend(t, full)
	c := context.Background()
	_, err := b.CreateVolume(c, backend.VolumeRequest{ID: backend.VolumeIDFor("a")})
	if !errors.Is(err, backend.ErrNoSpace) {
		t.Errorf("create at 91%%: %v", err)
	}
	_, err = b.CreateSnapshot(c, backend.SnapshotRequest{ID: backend.SnapshotIDFor("a"), SourceVolumeID: fixtureVol})
	if !errors.Is(err, backend.ErrNoSpace) {
		t.Errorf("snapshot at 91%%: %v", err)
	}
	_, err = b.ExpandVolume(c, fixtureVol, 1<<30)
	if !errors.Is(err, backend.ErrNoSpace) {
		t.Errorf("expand at 91%%: %v", err)
	}
	capacity, err := b.Capacity(c, "")
	if err != nil || capacity.AvailableBytes != 0 || capacity.DataPercent != 91 {
		t.Errorf("capacity = %+v, %v", capacity, err)
	}
	if m := mutations(f); len(m) != 0 {
		t.Errorf("ran %q", m)
	}

	b2, _ := fakeBackend(t, string(readFixture(t, "lvs-vg.json")))
	_, err = b2.CreateVolume(c, backend.VolumeRequest{ID: backend.VolumeIDFor("huge"), RequiredBytes: 2 << 30})
	if !errors.Is(err, backend.ErrOutOfRange) {
		t.Errorf("volume larger than the pool: %v, want ErrOutOfRange", err)
	}
}

func TestCapacityFromReport(t *testing.T) {
	b, _ := fakeBackend(t, string(readFixture(t, "lvs-vg.json")))
	c, err := b.Capacity(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	// Pool 1 GiB at 4.69%; thin LVs: 8 MiB + 3 x 256 MiB.
	wantProvisioned := int64(8<<20 + 3*256<<20)
	total, pct := float64(1<<30), 4.69
	used := int64(total * pct / 100)
	if c.TotalBytes != 1<<30 || c.ProvisionedBytes != wantProvisioned || c.UsedBytes != used ||
		c.AvailableBytes != (1<<30-used)/(4<<20)*(4<<20) || c.MaximumVolumeBytes != 1<<30 || c.MetadataPercent != 10.74 {
		t.Errorf("capacity = %+v", c)
	}
}

func TestHalfMadeHiddenAndRemovedAtStart(t *testing.T) {
	b, f := fakeBackend(t, string(readFixture(t, "lvs-vg.json")))
	f.On("lvm lvremove", "", 0, "")
	vols, err := b.ListVolumes(context.Background())
	if err != nil || len(vols) != 1 || vols[0].ID != fixtureVol {
		t.Fatalf("ListVolumes = %v, %v; want only the complete volume", vols, err)
	}
	snaps, err := b.ListSnapshots(context.Background())
	if err != nil || len(snaps) != 1 || snaps[0].SourceVolumeID != fixtureVol || !snaps[0].ReadyToUse {
		t.Fatalf("ListSnapshots = %v, %v", snaps, err)
	}
	if err := b.removeHalfMade(context.Background()); err != nil {
		t.Fatal(err)
	}
	if m := mutations(f); len(m) != 1 || m[0] != "lvm lvremove --yes vgcap/"+fixtureClone {
		t.Errorf("start-up removed %q; want only the half-made clone", m)
	}
}

func TestNewBootstrapsBlankDevice(t *testing.T) {
	f := &exec.Fake{}
	f.On("lvm vgs", "", 5, `  Volume group "vgcap" not found`)
	f.On("lvm pvs", "", 5, `  Failed to find physical volume "/dev/vdb".`)
	f.On("blkid", "", 2, "")
	f.On("lvm pvcreate", "", 0, "")
	f.On("lvm vgcreate", "", 0, "")
	_, err := New(context.Background(), Config{VG: "vgcap", ThinPool: "pool", Devices: []string{"/dev/vdb"}, Runner: f})
	// The fake's vgs keeps saying "not found" after vgcreate: New stops
	// there, after the steps under test.
	if err == nil {
		t.Fatal("expected an error from the scripted vgs")
	}
	want := []string{
		"lvm vgs --reportformat json --units b --nosuffix -o vg_name,vg_uuid,vg_size,vg_free,vg_extent_size,vg_free_count,vg_attr,vg_tags vgcap",
		"lvm pvs --reportformat json --units b --nosuffix -o pv_name,vg_name,pv_size /dev/vdb",
		"blkid --probe --output export /dev/vdb",
		"lvm pvcreate /dev/vdb",
		"lvm vgcreate --addtag csi-thin.io/owned vgcap /dev/vdb",
	}
	got := f.Lines()
	if len(got) < len(want) || strings.Join(got[:len(want)], "\n") != strings.Join(want, "\n") {
		t.Errorf("commands:\n%s\nwant first:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestNewRefusesDeviceWithSignature(t *testing.T) {
	f := &exec.Fake{}
	f.On("lvm vgs", "", 5, `  Volume group "vgcap" not found`)
	f.On("lvm pvs", "", 5, `  Failed to find physical volume "/dev/vdb".`)
	f.On("blkid", "DEVNAME=/dev/vdb\nUUID=1234\nTYPE=ext4\n", 0, "")
	_, err := New(context.Background(), Config{VG: "vgcap", Devices: []string{"/dev/vdb"}, Runner: f})
	if !errors.Is(err, backend.ErrPrecondition) || !strings.Contains(err.Error(), "TYPE=ext4") {
		t.Fatalf("err = %v, want ErrPrecondition naming the signature", err)
	}
	for _, l := range f.Lines() {
		if strings.Contains(l, "pvcreate") || strings.Contains(l, "vgcreate") {
			t.Errorf("ran %s on a device with a filesystem", l)
		}
	}
}

func TestHealthAndCondition(t *testing.T) {
	full, err := ParseLVs(readFixture(t, "lvs-pool-full.json"))
	if err != nil {
		t.Fatal(err)
	}
	b, f := fakeBackend(t, "")
	f.On(lvsPrefix+" vgcap/pool", string(readFixture(t, "lvs-pool-full.json")), 0, "")
	if h := b.Health(context.Background()); h.Healthy || !strings.Contains(h.Message, "out of data space") {
		t.Errorf("health of a full pool = %+v", h)
	}
	pool := lvByName(t, full, "pool")
	if c := b.condition(&LV{Name: "v-x"}, &pool); !c.Abnormal {
		t.Errorf("condition in a full pool = %+v", c)
	}
}
