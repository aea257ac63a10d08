package lvmthin

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/command"
	"github.com/csi-thin/csi-thin/pkg/volstream"
)

// The producer's commands on command.Fake: the metadata snapshot is
// reserved around the one metadata read and released whatever happens;
// the data itself is read from the device, which test/lvm covers.

const (
	thinIDPrefix = "lvm lvs --reportformat json --units b --nosuffix -o lv_name,thin_id"
	reserve      = "dmsetup message vgcap-pool-tpool 0 reserve_metadata_snap"
	release      = "dmsetup message vgcap-pool-tpool 0 release_metadata_snap"
	tmeta        = "/dev/mapper/vgcap-pool_tmeta"
)

func thinIDReport(ids map[string]string) string {
	var rows []string
	for name, id := range ids {
		rows = append(rows, `{"lv_name":"`+name+`", "thin_id":"`+id+`"}`)
	}
	return `{"report":[{"lv":[` + strings.Join(rows, ",") + `]}]}`
}

func streamBackend(t *testing.T) (*Backend, *command.Fake) {
	b, f := fakeBackend(t, string(readFixture(t, "lvs-vg.json")))
	f.On(thinIDPrefix, thinIDReport(map[string]string{fixtureSnap: "7"}), 0, "")
	f.On(reserve, "", 0, "")
	f.On(release, "", 0, "")
	return b, f
}

func metadataCommands(f *command.Fake) []string {
	var out []string
	for _, l := range f.Lines() {
		if !strings.HasPrefix(l, "lvm lvs ") {
			out = append(out, l)
		}
	}
	return out
}

func TestSendUnmappedSnapshot(t *testing.T) {
	b, f := streamBackend(t)
	f.On("thin_dump", `<superblock data_block_size="128"><device dev_id="7"/></superblock>`, 0, "")
	var w bytes.Buffer
	st, err := b.SendSnapshot(context.Background(), fixtureSnap, "", &w)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{reserve, "thin_dump --metadata-snap --dev-id 7 " + tmeta, release}
	if got := metadataCommands(f); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("commands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	sr, err := volstream.NewReader(&w)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sr.Next(); err != io.EOF {
		t.Fatalf("an unmapped snapshot's stream: %v, want a verified end", err)
	}
	if h := sr.Header(); h.Kind != volstream.KindLVMThin || h.SnapshotID != fixtureSnap || h.AllocatedBytes != 0 || h.VolumeBytes <= 0 {
		t.Errorf("header %+v", h)
	}
	if st.AllocatedBytes != 0 || st.PayloadBytes != 0 || st.StreamBytes != sr.StreamBytes() {
		t.Errorf("stats %+v", st)
	}
}

func TestSendReleasesTheMetadataSnapshotOnFailure(t *testing.T) {
	for _, tc := range []struct {
		name, dump string
		code       int
	}{
		{"thin_dump fails", "", 1},
		{"thin_dump prints what is not understood", "<superblock", 0},
		{"a mapping past the snapshot's size", `<superblock data_block_size="128"><device dev_id="7"><single_mapping origin_block="1000000"/></device></superblock>`, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, f := streamBackend(t)
			f.On("thin_dump", tc.dump, tc.code, "bad superblock")
			var w bytes.Buffer
			if _, err := b.SendSnapshot(context.Background(), fixtureSnap, "", &w); err == nil {
				t.Fatal("send succeeded")
			}
			got := metadataCommands(f)
			if len(got) != 3 || got[0] != reserve || got[2] != release {
				t.Errorf("commands %q: want reserve, thin_dump, release", got)
			}
			if w.Len() != 0 {
				t.Errorf("a send that failed before its first byte wrote %d bytes", w.Len())
			}
		})
	}
}

func TestSendReleasesALeftoverReservation(t *testing.T) {
	b, f := streamBackend(t)
	// The first reserve finds one held (a crashed send's); the second,
	// after the release, succeeds.
	calls := 0
	runner := runnerFunc(func(ctx context.Context, name string, args ...string) (command.Result, error) {
		line := command.Call{Name: name, Args: args}.String()
		if line == reserve {
			calls++
			if calls == 1 {
				f.Run(ctx, name, args...)
				return command.Result{ExitCode: 1}, &command.Error{ExitCode: 1, Stderr: "device-mapper: message ioctl failed: Invalid argument", Err: errors.New("exit status 1")}
			}
		}
		return f.Run(ctx, name, args...)
	})
	b.lvm = newLVM(runner, "")
	f.On("dmsetup status", "0 2097152 thin-pool 3 110/1024 768/16384 42 rw discard_passdown error_if_no_space - 256\n", 0, "")
	f.On("thin_dump", `<superblock data_block_size="128"><device dev_id="7"/></superblock>`, 0, "")
	if _, err := b.SendSnapshot(context.Background(), fixtureSnap, "", io.Discard); err != nil {
		t.Fatal(err)
	}
	want := []string{reserve, "dmsetup status vgcap-pool-tpool", release, reserve, "thin_dump --metadata-snap --dev-id 7 " + tmeta, release}
	if got := metadataCommands(f); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("commands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestSendIncrementalAsksThinDelta(t *testing.T) {
	b, f := streamBackend(t)
	parent := backend.SnapshotIDFor("parent")
	f.On(thinIDPrefix, thinIDReport(map[string]string{fixtureSnap: "7", parent: "3"}), 0, "")
	f.On("thin_delta", `<superblock data_block_size="128"><diff left="3" right="7"><same begin="0" length="4"/></diff></superblock>`, 0, "")
	// The parent must be a snapshot of ours: the fixture has none by
	// that name, so the send is refused before any metadata is read.
	if _, err := b.SendSnapshot(context.Background(), fixtureSnap, parent, io.Discard); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("send against a parent not held: %v, want ErrNotFound", err)
	}
	if got := metadataCommands(f); len(got) != 0 {
		t.Errorf("commands %q for a parent not held", got)
	}
	if _, err := b.SendSnapshot(context.Background(), fixtureSnap, fixtureSnap, io.Discard); !errors.Is(err, backend.ErrInvalid) {
		t.Errorf("send against itself: %v, want ErrInvalid", err)
	}
}

func TestParseThinIDs(t *testing.T) {
	ids, err := ParseThinIDs([]byte(`{"report":[{"lv":[{"lv_name":"a","thin_id":"7"},{"lv_name":"pool","thin_id":""}]}]}`))
	if err != nil || len(ids) != 1 || ids["a"] != 7 {
		t.Fatalf("ids %v, %v", ids, err)
	}
	for _, bad := range []string{`{"report":[{"lv":[{"lv_name":"a","thin_id":"-1"}]}]}`, `{"report":[{"lv":[{"lv_name":"a","thin_id":"x"}]}]}`, `[`} {
		if _, err := ParseThinIDs([]byte(bad)); err == nil {
			t.Errorf("%s: parsed", bad)
		}
	}
}

func TestPoolStatusHeldMetadataRoot(t *testing.T) {
	for _, tc := range []struct {
		status string
		held   bool
	}{
		{poolStatusRW, false},
		{"0 2097152 thin-pool 3 110/1024 768/16384 42 rw discard_passdown error_if_no_space - 256\n", true},
	} {
		s, err := ParseThinPoolStatus([]byte(tc.status))
		if err != nil || s.HeldMetadataRoot != tc.held {
			t.Errorf("%q: held %v, %v; want %v", tc.status, s.HeldMetadataRoot, err, tc.held)
		}
	}
}

type runnerFunc func(ctx context.Context, name string, args ...string) (command.Result, error)

func (r runnerFunc) Run(ctx context.Context, name string, args ...string) (command.Result, error) {
	return r(ctx, name, args...)
}

func TestReceivingTagMakesAnLVHalfMade(t *testing.T) {
	tags, err := encodeTags(objectMeta{Kind: kindVolume, Receiving: true})
	if err != nil {
		t.Fatal(err)
	}
	lv := &LV{Name: fixtureVol, Size: 1 << 30, Tags: tags}
	m := lvMeta(lv)
	if !m.Owned || !m.Receiving || !m.Creating {
		t.Fatalf("meta %+v: want owned, receiving, half made", m)
	}
	if resumable(lv, m, backend.Source{}, backend.AccessMount, 2<<30) {
		t.Error("a retried CreateVolume would complete a half-received LV")
	}
}

// stream makes a sparse stream of kind with one range.
func stream(t *testing.T, kind volstream.Kind, parent string) []byte {
	var buf bytes.Buffer
	alloc := int64(0)
	if kind == volstream.KindLVMThin {
		alloc = 4096
	}
	sw, err := volstream.NewWriter(&buf, volstream.Header{Kind: kind, VolumeBytes: 1 << 30, AllocatedBytes: alloc,
		SnapshotID: backend.SnapshotIDFor("sent"), ParentSnapshotID: parent})
	if err != nil {
		t.Fatal(err)
	}
	if kind == volstream.KindLVMThin {
		_, err = sw.WriteAt(make([]byte, 4096), 0)
	} else {
		_, err = sw.Write([]byte("btrfs send"))
	}
	if err != nil || sw.Close() != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestReceiveRefusesBeforeCreating(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stream []byte
		want   error
	}{
		{"a btrfs stream", stream(t, volstream.KindBtrfs, ""), backend.ErrInvalid},
		{"not a stream", []byte("hello, world"), volstream.ErrNotAStream},
		{"an incremental whose parent the pool does not hold", stream(t, volstream.KindLVMThin, backend.SnapshotIDFor("absent")), backend.ErrPrecondition},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, f := streamBackend(t)
			id := backend.VolumeIDFor("received")
			if _, err := b.ReceiveVolume(context.Background(), backend.VolumeRequest{ID: id}, bytes.NewReader(tc.stream)); !errors.Is(err, tc.want) {
				t.Errorf("ReceiveVolume: %v, want %v", err, tc.want)
			}
			if _, err := b.ReceiveSnapshot(context.Background(), backend.SnapshotIDFor("received"), "", bytes.NewReader(tc.stream)); !errors.Is(err, tc.want) {
				t.Errorf("ReceiveSnapshot: %v, want %v", err, tc.want)
			}
			if m := mutations(f); len(m) != 0 {
				t.Errorf("commands for a refused stream: %q", m)
			}
		})
	}
}
