package lvmthin

import (
	"encoding/base32"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// All state lives in LV tags: there is no database to lose or to drift
// from the pool. LVM allows only [A-Za-z0-9_+.-/=!:&#] in a tag, so values
// that come from users (names, parameters) are base32-encoded and values we
// generate are checked against that alphabet.
const (
	tagPrefix = "csi-thin.io/"
	// tagOwned marks every LV this driver made; nothing without it is
	// ever changed or removed.
	tagOwned = tagPrefix + "owned"
	// tagReceiving marks an LV being written from a volume stream
	// (stream.go): half made until the stream verified and the tag is
	// deleted, which is the receive's commit.
	tagReceiving = tagPrefix + "receiving"

	keyKind    = "kind"
	keyName    = "name"
	keySource  = "source"
	keyAccess  = "access"
	keyFsType  = "fstype"
	keyCreated = "created"
	keyParams  = "params"
	// keyGrow ("FROM:TO", bytes) is set by the lvcreate of a clone or
	// restore larger than its source: lvcreate makes the LV at the
	// source's size FROM, and the lvextend to TO completes it. An LV whose
	// size is still FROM is half made (see lvMeta); any later size means
	// the lvextend, which is atomic, ran.
	keyGrow = "grow"
	// keyGroup ("GROUPID:SIZE") marks a member of a group snapshot of
	// SIZE members (backend.SequentialGroups).
	keyGroup = "group"

	kindVolume   = "volume"
	kindSnapshot = "snapshot"
)

var (
	tagValue = regexp.MustCompile(`^[A-Za-z0-9_+.\-/=!:&#]*$`)
	fsType   = regexp.MustCompile(`^[a-z0-9]{0,16}$`)
	// base32 without padding, so that the value is plain [A-Z2-7].
	tagEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)
)

func tag(key, value string) string { return tagPrefix + key + "=" + value }

// objectMeta is what the tags of one LV say.
type objectMeta struct {
	Owned bool
	// Creating: the LV is half made, its grow has not happened (set by
	// lvMeta, which sees sizes) or it is still being received.
	Creating bool
	// Receiving: tagReceiving is set.
	Receiving  bool
	Grow       growth
	Kind       string
	Name       string
	Source     backend.Source
	AccessType backend.AccessType
	FsType     string
	CreatedAt  time.Time
	Parameters map[string]string
	Group      string
	GroupSize  int
}

// growth is the keyGrow tag: a copy made at From bytes and extended to
// To as its last step.
type growth struct{ From, To int64 }

// pending reports whether an LV of size bytes has yet to be extended.
func (g growth) pending(size int64) bool { return g.To > g.From && size == g.From }

// encodeTags turns metadata into the tags a new LV is created with.
// Creating is not written: a half-made LV is one whose grow is pending.
func encodeTags(m objectMeta) ([]string, error) {
	tags := []string{tagOwned, tag(keyKind, m.Kind)}
	if m.Receiving {
		tags = append(tags, tagReceiving)
	}
	if m.Grow != (growth{}) {
		if m.Grow.From <= 0 || m.Grow.To <= m.Grow.From {
			return nil, fmt.Errorf("grow from %d to %d bytes: %w", m.Grow.From, m.Grow.To, backend.ErrInvalid)
		}
		tags = append(tags, tag(keyGrow, strconv.FormatInt(m.Grow.From, 10)+":"+strconv.FormatInt(m.Grow.To, 10)))
	}
	if m.Name != "" {
		tags = append(tags, tag(keyName, tagEncoding.EncodeToString([]byte(m.Name))))
	}
	if m.Source.Kind != backend.SourceNone {
		tags = append(tags, tag(keySource, string(m.Source.Kind)+":"+m.Source.ID))
	}
	if m.AccessType != "" {
		tags = append(tags, tag(keyAccess, string(m.AccessType)))
	}
	if m.FsType != "" {
		if !fsType.MatchString(m.FsType) {
			return nil, fmt.Errorf("fsType %q: %w", m.FsType, backend.ErrInvalid)
		}
		tags = append(tags, tag(keyFsType, m.FsType))
	}
	if !m.CreatedAt.IsZero() {
		tags = append(tags, tag(keyCreated, strconv.FormatInt(m.CreatedAt.UnixNano(), 10)))
	}
	if m.Group != "" {
		if !backend.IsGroupSnapshotID(m.Group) || m.GroupSize < 1 {
			return nil, fmt.Errorf("group %q of %d: %w", m.Group, m.GroupSize, backend.ErrInvalid)
		}
		tags = append(tags, tag(keyGroup, m.Group+":"+strconv.Itoa(m.GroupSize)))
	}
	if len(m.Parameters) > 0 {
		js, err := json.Marshal(m.Parameters) // map keys are sorted: stable
		if err != nil {
			return nil, fmt.Errorf("encode parameters: %w", err)
		}
		tags = append(tags, tag(keyParams, tagEncoding.EncodeToString(js)))
	}
	for _, t := range tags {
		if !tagValue.MatchString(t) {
			return nil, fmt.Errorf("tag %q has characters LVM does not allow: %w", t, backend.ErrInvalid)
		}
	}
	return tags, nil
}

// lvMeta is what an LV's tags say, with Creating also set when the LV is
// a copy whose lvextend has not run: that needs the LV's size.
func lvMeta(lv *LV) objectMeta {
	m := decodeTags(lv.Tags)
	if m.Grow.pending(lv.Size) || m.Receiving {
		m.Creating = true
	}
	return m
}

// decodeTags reads our tags back; tags of other tools are ignored, and a
// value that does not decode is left empty rather than hiding the LV.
func decodeTags(tags []string) objectMeta {
	var m objectMeta
	for _, t := range tags {
		if t == tagOwned {
			m.Owned = true
			continue
		}
		if t == tagReceiving {
			m.Receiving = true
			continue
		}
		rest, ok := strings.CutPrefix(t, tagPrefix)
		if !ok {
			continue
		}
		key, value, ok := strings.Cut(rest, "=")
		if !ok {
			continue
		}
		switch key {
		case keyKind:
			m.Kind = value
		case keyName:
			if b, err := tagEncoding.DecodeString(value); err == nil {
				m.Name = string(b)
			}
		case keySource:
			if kind, id, ok := strings.Cut(value, ":"); ok {
				m.Source = backend.Source{Kind: backend.SourceKind(kind), ID: id}
			}
		case keyAccess:
			m.AccessType = backend.AccessType(value)
		case keyFsType:
			m.FsType = value
		case keyCreated:
			if ns, err := strconv.ParseInt(value, 10, 64); err == nil {
				m.CreatedAt = time.Unix(0, ns).UTC()
			}
		case keyGrow:
			from, to, _ := strings.Cut(value, ":")
			f, ferr := strconv.ParseInt(from, 10, 64)
			g, gerr := strconv.ParseInt(to, 10, 64)
			if ferr == nil && gerr == nil {
				m.Grow = growth{From: f, To: g}
			}
		case keyGroup:
			id, size, _ := strings.Cut(value, ":")
			if n, err := strconv.Atoi(size); err == nil && backend.IsGroupSnapshotID(id) {
				m.Group, m.GroupSize = id, n
			}
		case keyParams:
			if b, err := tagEncoding.DecodeString(value); err == nil {
				var p map[string]string
				if json.Unmarshal(b, &p) == nil {
					m.Parameters = p
				}
			}
		}
	}
	return m
}
