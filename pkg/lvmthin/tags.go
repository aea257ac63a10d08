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
	// tagCreating is set by an lvcreate that needs further steps (a clone
	// or restore grown by lvextend) and removed as the last step; an LV
	// still carrying it is half made. A one-step create (lvcreate sets all
	// tags atomically) does not need it.
	tagCreating = tagPrefix + "creating"

	keyKind    = "kind"
	keyName    = "name"
	keySource  = "source"
	keyAccess  = "access"
	keyFsType  = "fstype"
	keyCreated = "created"
	keyParams  = "params"

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
	Owned      bool
	Creating   bool
	Kind       string
	Name       string
	Source     backend.Source
	AccessType backend.AccessType
	FsType     string
	CreatedAt  time.Time
	Parameters map[string]string
}

// encodeTags turns metadata into the tags a new LV is created with,
// including tagCreating when m.Creating is set.
func encodeTags(m objectMeta) ([]string, error) {
	tags := []string{tagOwned, tag(keyKind, m.Kind)}
	if m.Creating {
		tags = append(tags, tagCreating)
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

// decodeTags reads our tags back; tags of other tools are ignored, and a
// value that does not decode is left empty rather than hiding the LV.
func decodeTags(tags []string) objectMeta {
	var m objectMeta
	for _, t := range tags {
		switch t {
		case tagOwned:
			m.Owned = true
			continue
		case tagCreating:
			m.Creating = true
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
