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
		Creating: true, Kind: kindVolume, Name: "pvc-1/ünïcode, comma & space",
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
