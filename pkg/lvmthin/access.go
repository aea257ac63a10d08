package lvmthin

import (
	"fmt"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// A copy keeps its source's access type. A raw block volume holds bytes
// its tenant wrote, which may be a crafted filesystem image: restored or
// cloned as a filesystem volume, the node would fsck and mount it, and a
// kernel filesystem driver parsing hostile metadata is an attack surface
// on the node. The other way round is refused too, so that the rule is
// simply "no access-type changes". A snapshot records its source's type
// (keyAccess) when it is taken.

// accessOf is the access type a volume or snapshot LV holds data for, and
// whether it is known. A volume without the tag is a filesystem volume
// (as volumeFrom reads it). A snapshot without it predates the tag: its
// source volume, if it still exists, says; otherwise it is unknown.
func (st *poolState) accessOf(lv *LV) (backend.AccessType, bool) {
	m := lvMeta(lv)
	if m.AccessType != "" {
		return m.AccessType, true
	}
	if m.Kind == kindVolume {
		return backend.AccessMount, true
	}
	if m.Source.Kind == backend.SourceVolume {
		if src := st.lvs[m.Source.ID]; src != nil {
			if sm := lvMeta(src); sm.Owned && sm.Kind == kindVolume {
				return st.accessOf(src)
			}
		}
	}
	return "", false
}

// checkCopyAccess refuses a copy of src with another access type. A
// snapshot of unknown type (older than the tag, its source gone) may be
// restored as raw block, which exposes only bytes, but not as a
// filesystem: it may be an image a tenant wrote to a block volume. An
// operator who knows it is a filesystem snapshot can say so with
// `lvchange --addtag csi-thin.io/access=mount VG/SNAPSHOT`.
func (st *poolState) checkCopyAccess(src *LV, id string, access backend.AccessType) error {
	had, known := st.accessOf(src)
	switch {
	case !known && access == backend.AccessBlock:
		return nil
	case !known:
		return fmt.Errorf("volume %s from %s: the snapshot does not record whether it holds a filesystem or raw block data "+
			"(taken by an older csi-thin, and its source volume is gone), so it can only be restored as a raw block volume; "+
			"if it is known to be a filesystem snapshot, tag it %s: %w", id, src.Name, tag(keyAccess, string(backend.AccessMount)), backend.ErrInvalid)
	case had != access:
		return fmt.Errorf("volume %s from %s: the source is %s access, the copy asks for %s: a copy keeps its source's access type "+
			"(a raw block volume may hold a crafted filesystem image): %w", id, src.Name, had, access, backend.ErrInvalid)
	}
	return nil
}
