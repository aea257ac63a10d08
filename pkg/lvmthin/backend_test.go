package lvmthin

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// Backend flows on command.Fake, scripted with the captured reports: the
// exact LVM commands each call runs, and the ones it must not run.

const lvsPrefix = "lvm lvs --reportformat json --units b --nosuffix -o lv_name,vg_name,lv_attr,lv_size,pool_lv,origin,lv_tags,data_percent,metadata_percent,lv_health_status,segtype,lv_when_full,discards,chunk_size,lv_time,vg_extent_size"

func fakeBackend(t *testing.T, vgReport string) (*Backend, *command.Fake) {
	t.Helper()
	f := &command.Fake{}
	f.On(lvsPrefix+" vgcap", vgReport, 0, "")
	cfg, err := Config{VG: "vgcap", ThinPool: "pool", NodeName: "n1", Runner: f}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	return &Backend{cfg: cfg, lvm: newLVM(f, ""), extentSize: 4 << 20}, f
}

// mutations are the commands that change something: all but the reports
// (lvs, and the pool's status from the kernel).
func mutations(f *command.Fake) []string {
	var out []string
	for _, l := range f.Lines() {
		if !strings.HasPrefix(l, "lvm lvs ") && !strings.HasPrefix(l, "dmsetup status ") {
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
		!strings.HasSuffix(m[0], " vgcap") {
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

// withExtent adds vg_extent_size, which lvs prints on every row since
// start-up reads the extent size from it, to a fixture captured before.
func withExtent(report string) string {
	return strings.ReplaceAll(report, `"lv_time":`, `"vg_extent_size":"4194304", "lv_time":`)
}

var createdTag = regexp.MustCompile(`csi-thin\.io/created=[0-9]+`)

// TestCommandSequences is the exact list of commands, reports included,
// that each mutating call runs: an LVM command costs about as much as the
// change it makes (docs/performance.md), so one more is a regression this
// test must catch.
func TestCommandSequences(t *testing.T) {
	const (
		lvsVG   = lvsPrefix + " vgcap"
		created = "csi-thin.io/created=N"
		ownVol  = "--addtag csi-thin.io/owned --addtag csi-thin.io/kind=volume"
		mount   = "--addtag csi-thin.io/access=mount --addtag " + created
	)
	newID, copyID, snapID := backend.VolumeIDFor("new"), backend.VolumeIDFor("copy"), backend.SnapshotIDFor("snap")
	fromVol := backend.Source{Kind: backend.SourceVolume, ID: fixtureVol}
	fromSnap := backend.Source{Kind: backend.SourceSnapshot, ID: fixtureSnap}
	clone := "lvm lvcreate --snapshot --name " + copyID + " --permission rw --setactivationskip n --activate n " + ownVol
	create := func(req backend.VolumeRequest, wantSize int64) func(*Backend) error {
		return func(b *Backend) error {
			v, err := b.CreateVolume(context.Background(), req)
			if err == nil && v.SizeBytes != wantSize {
				err = fmt.Errorf("size %d, want %d", v.SizeBytes, wantSize)
			}
			return err
		}
	}
	for _, tc := range []struct {
		name   string
		report func(string) string
		call   func(*Backend) error
		want   []string
	}{
		{name: "new volume", call: create(backend.VolumeRequest{ID: newID, RequiredBytes: 100 << 20}, 100<<20),
			want: []string{lvsVG, "lvm lvcreate --type thin --virtualsize 104857600b --thinpool pool --name " + newID + " " + ownVol + " " + mount + " vgcap"}},
		{name: "clone at the source's size", call: create(backend.VolumeRequest{ID: copyID, Source: fromVol}, 256<<20),
			want: []string{lvsVG, clone + " --addtag csi-thin.io/source=volume:" + fixtureVol + " " + mount + " vgcap/" + fixtureVol}},
		{name: "clone asked smaller than its source gets the source's size",
			call: create(backend.VolumeRequest{ID: copyID, RequiredBytes: 100 << 20, Source: fromVol}, 256<<20),
			want: []string{lvsVG, clone + " --addtag csi-thin.io/source=volume:" + fixtureVol + " " + mount + " vgcap/" + fixtureVol}},
		{name: "restore larger than its snapshot: lvcreate records the growth, lvextend completes it",
			call: create(backend.VolumeRequest{ID: copyID, RequiredBytes: 512 << 20, Source: fromSnap}, 512<<20),
			want: []string{lvsVG,
				clone + " --addtag csi-thin.io/grow=268435456:536870912 --addtag csi-thin.io/source=snapshot:" + fixtureSnap + " " + mount + " vgcap/" + fixtureSnap,
				"lvm lvextend --size 536870912b vgcap/" + copyID}},
		{name: "snapshot", call: func(b *Backend) error {
			_, err := b.CreateSnapshot(context.Background(), backend.SnapshotRequest{ID: snapID, SourceVolumeID: fixtureVol})
			return err
		}, want: []string{lvsVG, "lvm lvcreate --snapshot --name " + snapID + " --permission r --setactivationskip y " +
			"--addtag csi-thin.io/owned --addtag csi-thin.io/kind=snapshot --addtag csi-thin.io/source=volume:" + fixtureVol + " --addtag csi-thin.io/access=mount --addtag csi-thin.io/fstype=ext4 --addtag " + created + " vgcap/" + fixtureVol}},
		{name: "expand, not read back", call: func(b *Backend) error {
			v, err := b.ExpandVolume(context.Background(), fixtureVol, 300<<20)
			if err == nil && (v.SizeBytes != 300<<20 || v.Name != "pvc-one") {
				err = fmt.Errorf("expanded volume %+v", v)
			}
			return err
		}, want: []string{lvsVG, "lvm lvextend --size 314572800b vgcap/" + fixtureVol}},
		{name: "delete", call: func(b *Backend) error { return b.DeleteVolume(context.Background(), fixtureVol) },
			want: []string{lvsVG, "lvm lvremove --yes vgcap/" + fixtureVol}},
		{name: "retry completes a pending grow with its lvextend",
			call: create(backend.VolumeRequest{ID: fixtureClone, RequiredBytes: 512 << 20, Source: fromSnap}, 512<<20),
			want: []string{lvsVG, "lvm lvextend --size 536870912b vgcap/" + fixtureClone}},
		{name: "retry at the source's size replaces a pending grow",
			call: create(backend.VolumeRequest{ID: fixtureClone, Source: fromSnap}, 256<<20),
			want: []string{lvsVG, "lvm lvremove --yes vgcap/" + fixtureClone,
				"lvm lvcreate --snapshot --name " + fixtureClone + " --permission rw --setactivationskip n --activate n " + ownVol +
					" --addtag csi-thin.io/source=snapshot:" + fixtureSnap + " " + mount + " vgcap/" + fixtureSnap}},
		{name: "start-up on an existing pool: one lvs, then recovery", report: withExtent,
			call: func(b *Backend) error {
				_, err := New(context.Background(), b.cfg)
				return err
			},
			want: []string{lvsVG, "lvm lvremove --yes vgcap/" + fixtureClone}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			report := string(readFixture(t, "lvs-vg.json"))
			if tc.report != nil {
				report = tc.report(report)
			}
			b, f := fakeBackend(t, report)
			f.On(lvsPrefix+" vgcap/", report, 0, "")
			for _, cmd := range []string{"lvcreate", "lvextend", "lvchange", "lvremove"} {
				f.On("lvm "+cmd, "", 0, "")
			}
			if err := tc.call(b); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, l := range f.Lines() {
				got = append(got, createdTag.ReplaceAllString(l, created))
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("commands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
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

func TestHalfMadeIsHidden(t *testing.T) {
	report := string(readFixture(t, "lvs-vg.json")) // its clone's grow is pending
	b, f := fakeBackend(t, report)
	f.On(lvsPrefix+" vgcap/", report, 0, "")
	if _, err := b.GetVolume(context.Background(), fixtureClone); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("GetVolume of a half-made LV: %v, want ErrNotFound", err)
	}
	_, err := b.CreateVolume(context.Background(), backend.VolumeRequest{ID: backend.VolumeIDFor("half"),
		Source: backend.Source{Kind: backend.SourceVolume, ID: fixtureClone}})
	if !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("clone of a half-made volume: %v, want ErrNotFound", err)
	}
	// Once extended, the same tags describe a whole volume.
	done := strings.Replace(report,
		`"lv_size":"268435456", "pool_lv":"pool", "origin":"s-`, `"lv_size":"536870912", "pool_lv":"pool", "origin":"s-`, 1)
	b, _ = fakeBackend(t, done)
	vols, err := b.ListVolumes(context.Background())
	if err != nil || len(vols) != 2 || vols[1].ID != fixtureClone || vols[1].SizeBytes != 512<<20 {
		t.Errorf("ListVolumes after the grow = %v, %v", vols, err)
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
	all, err := ParseLVs([]byte(withExtent(string(readFixture(t, "lvs-vg.json")))))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.removeHalfMade(context.Background(), all); err != nil {
		t.Fatal(err)
	}
	if m := mutations(f); len(m) != 1 || m[0] != "lvm lvremove --yes vgcap/"+fixtureClone {
		t.Errorf("start-up removed %q; want only the half-made clone", m)
	}
}

func TestNewBootstrapsBlankDevice(t *testing.T) {
	f := &command.Fake{}
	f.On("lvm lvs", "", 5, "  Volume group \"vgcap\" not found\n  Cannot process volume group vgcap")
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
		lvsPrefix + " vgcap",
		"lvm pvs --reportformat json --units b --nosuffix -o pv_name,vg_name,pv_size /dev/vdb",
		"blkid --probe --output export /dev/vdb",
		"lvm pvcreate /dev/vdb",
		"lvm vgcreate --addtag csi-thin.io/owned vgcap /dev/vdb",
		"lvm vgs --reportformat json --units b --nosuffix -o vg_name,vg_uuid,vg_size,vg_free,vg_extent_size,vg_free_count,vg_attr,vg_tags vgcap",
	}
	got := f.Lines()
	if len(got) < len(want) || strings.Join(got[:len(want)], "\n") != strings.Join(want, "\n") {
		t.Errorf("commands:\n%s\nwant first:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestNewRefusesDeviceWithSignature(t *testing.T) {
	f := &command.Fake{}
	f.On("lvm lvs", "", 5, `  Volume group "vgcap" not found`)
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

// TestConditionNamesThePoolState: each pool state a volume can suffer
// from gets its own reason, and the two that come from exhausted metadata
// say so and point at the recovery procedure.
func TestConditionNamesThePoolState(t *testing.T) {
	b, _ := fakeBackend(t, "")
	for _, tc := range []struct {
		attr, reason string
		data         float64
		says         []string
	}{
		{"twi-aot-F-", backend.ReasonPoolError, 0, []string{"has failed", "metadata", "docs/lvm-metadata.md"}},
		{"twi-aotzM-", backend.ReasonPoolReadOnly, 50, []string{"metadata is read-only", "docs/lvm-metadata.md"}},
		{"twi-aot-D-", backend.ReasonPoolFull, 100, []string{"out of data space"}},
		{"twi-aot---", backend.ReasonPoolFull, 100, []string{"out of data space"}},
		{"twi---t---", backend.ReasonPoolError, 0, []string{"not active"}},
	} {
		attr, err := ParseLVAttr(tc.attr)
		if err != nil {
			t.Fatal(err)
		}
		pool := &LV{Name: "pool", Attr: attr, DataPercent: tc.data}
		// The volume reports the pool's failure too; the pool's is the
		// message that says what to do.
		vol := &LV{Name: "v-x", Attr: attr}
		c := b.condition(vol, pool)
		if !c.Abnormal || c.Reason != tc.reason {
			t.Errorf("%s: condition %+v, want abnormal with reason %s", tc.attr, c, tc.reason)
		}
		for _, s := range tc.says {
			if !strings.Contains(c.Message, s) {
				t.Errorf("%s: message %q lacks %q", tc.attr, c.Message, s)
			}
		}
	}
	healthy, _ := ParseLVAttr("twi-aotz--")
	if c := b.condition(&LV{Name: "v-x"}, &LV{Name: "pool", Attr: healthy, DataPercent: 10}); c.Abnormal || c.Reason != "" {
		t.Errorf("healthy pool: condition %+v", c)
	}
}

// TestCreateOnAnotherNodeIsRefused: a volume or copy asked for another
// node is ErrPrecondition before any LVM command (backend.CheckPlacement);
// the real pool is held to it by test/lvm TestContract.
func TestCreateOnAnotherNodeIsRefused(t *testing.T) {
	b, f := fakeBackend(t, string(readFixture(t, "lvs-vg.json")))
	for _, req := range []backend.VolumeRequest{
		{ID: backend.VolumeIDFor("elsewhere"), RequiredBytes: 100 << 20, Node: "n2"},
		{ID: backend.VolumeIDFor("elsewhere"), Node: "n2", Source: backend.Source{Kind: backend.SourceVolume, ID: fixtureVol}},
	} {
		if _, err := b.CreateVolume(context.Background(), req); !errors.Is(err, backend.ErrPrecondition) {
			t.Errorf("create %+v: err = %v, want ErrPrecondition", req, err)
		}
	}
	if len(f.Lines()) != 0 {
		t.Errorf("commands run for a refused create: %q", f.Lines())
	}
}
