package lvmthin

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

func TestTagsRoundTrip(t *testing.T) {
	in := objectMeta{
		Grow: growth{From: 64 << 20, To: 128 << 20}, Kind: kindVolume, Name: "pvc-1/ünïcode, comma & space",
		Source:     backend.Source{Kind: backend.SourceSnapshot, ID: "s-0123456789abcdef0123456789abcdef"},
		AccessType: backend.AccessBlock, FsType: "xfs",
		CreatedAt:  time.Unix(1764124429, 123456789).UTC(),
		Parameters: map[string]string{"b": "2", "a": "x,y=z"},
	}
	tags, err := encodeTags(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range tags {
		if !tagValue.MatchString(tg) {
			t.Errorf("tag %q is outside LVM's alphabet", tg)
		}
	}
	out := decodeTags(append(tags, "someone-elses-tag", "csi-thin.io/unknown=1"))
	in.Owned = true
	if !reflect.DeepEqual(in, out) {
		t.Errorf("round trip\n got %+v\nwant %+v", out, in)
	}
}

func TestTagsRefuseBadFsType(t *testing.T) {
	_, err := encodeTags(objectMeta{Kind: kindVolume, FsType: "ext4,ro"})
	if !errors.Is(err, backend.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
}

func TestDecodeIgnoresBrokenValues(t *testing.T) {
	m := decodeTags([]string{tagOwned, "csi-thin.io/name=!!!", "csi-thin.io/created=soon", "csi-thin.io/kind=volume"})
	if !m.Owned || m.Name != "" || !m.CreatedAt.IsZero() || m.Kind != kindVolume {
		t.Errorf("decoded %+v", m)
	}
}

// TestHalfMade: an LV is half made while its size is still the FROM of
// its grow tag.
func TestHalfMade(t *testing.T) {
	grow := tag(keyGrow, "67108864:134217728")
	for _, tc := range []struct {
		name string
		tags []string
		size int64
		want bool
	}{
		{"one-step create", []string{tagOwned}, 64 << 20, false},
		{"grow pending", []string{tagOwned, grow}, 64 << 20, true},
		{"grown", []string{tagOwned, grow}, 128 << 20, false},
		{"grown, then expanded", []string{tagOwned, grow}, 1 << 30, false},
		{"garbled grow tag: whole, never removed on a guess", []string{tagOwned, tag(keyGrow, "64M:128M")}, 64 << 20, false},
		{"grow tag that does not grow", []string{tagOwned, tag(keyGrow, "67108864:67108864")}, 64 << 20, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := lvMeta(&LV{Size: tc.size, Tags: tc.tags}).Creating; got != tc.want {
				t.Errorf("half made = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestTagsRefuseBadGrowth(t *testing.T) {
	for _, g := range []growth{{From: 0, To: 1}, {From: 2, To: 1}, {From: 1, To: 1}} {
		if _, err := encodeTags(objectMeta{Kind: kindVolume, Grow: g}); !errors.Is(err, backend.ErrInvalid) {
			t.Errorf("grow %+v: err = %v, want ErrInvalid", g, err)
		}
	}
}
