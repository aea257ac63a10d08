package lvmthin

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"math"
	"sort"
)

// A thin pool's metadata says which blocks of each thin device are mapped;
// a stream of a snapshot carries only those (or, incremental, only those
// that differ from its parent). These parsers turn the XML of the
// thin-provisioning-tools (`thin_dump --dev-id`, `thin_delta`) into byte
// ranges of the device, so the producer never reads unmapped space.

// ThinRange is a range of a thin device, in bytes.
type ThinRange struct {
	Offset, Length int64
}

// End is the first byte after the range.
func (r ThinRange) End() int64 { return r.Offset + r.Length }

// ErrThinMetadata: the tools' output is not what this parser understands;
// a producer that cannot tell what is mapped must not guess.
var ErrThinMetadata = errors.New("unreadable thin metadata report")

const sectorBytes = 512

type xmlSuperblock struct {
	XMLName       xml.Name    `xml:"superblock"`
	DataBlockSize *uint64     `xml:"data_block_size,attr"`
	Devices       []xmlDevice `xml:"device"`
	Diffs         []xmlDiff   `xml:"diff"`
}

type xmlDevice struct {
	DevID   *uint64      `xml:"dev_id,attr"`
	Ranges  []xmlMapping `xml:"range_mapping"`
	Singles []xmlSingle  `xml:"single_mapping"`
}

type xmlMapping struct {
	OriginBegin *uint64 `xml:"origin_begin,attr"`
	Length      *uint64 `xml:"length,attr"`
}

type xmlSingle struct {
	OriginBlock *uint64 `xml:"origin_block,attr"`
}

// xmlDiff holds thin_delta's entries in both its layouts: the terse one
// (`<different begin= length=/>`) and --verbose's (`<different><range
// begin= length=/></different>`).
type xmlDiff struct {
	Left      *uint64        `xml:"left,attr"`
	Right     *uint64        `xml:"right,attr"`
	Same      []xmlDiffEntry `xml:"same"`
	Different []xmlDiffEntry `xml:"different"`
	LeftOnly  []xmlDiffEntry `xml:"left_only"`
	RightOnly []xmlDiffEntry `xml:"right_only"`
}

type xmlDiffEntry struct {
	Begin  *uint64        `xml:"begin,attr"`
	Length *uint64        `xml:"length,attr"`
	Ranges []xmlDiffRange `xml:"range"`
}

type xmlDiffRange struct {
	Begin  *uint64 `xml:"begin,attr"`
	Length *uint64 `xml:"length,attr"`
}

func decodeSuperblock(out []byte) (*xmlSuperblock, int64, error) {
	var sb xmlSuperblock
	dec := xml.NewDecoder(bytes.NewReader(out))
	dec.Strict = true
	if err := dec.Decode(&sb); err != nil {
		return nil, 0, fmt.Errorf("%w: %v", ErrThinMetadata, err)
	}
	// Anything after the superblock but blank space is not a report.
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		if cd, ok := tok.(xml.CharData); ok && len(bytes.TrimSpace(cd)) == 0 {
			continue
		}
		return nil, 0, fmt.Errorf("%w: content after the superblock", ErrThinMetadata)
	}
	if sb.DataBlockSize == nil || *sb.DataBlockSize == 0 || *sb.DataBlockSize > math.MaxInt64/sectorBytes {
		return nil, 0, fmt.Errorf("%w: missing or impossible data_block_size", ErrThinMetadata)
	}
	return &sb, int64(*sb.DataBlockSize) * sectorBytes, nil
}

// blockRange turns a range of blocks into bytes, refusing what a device
// cannot hold.
func blockRange(begin, length *uint64, blockBytes int64, what string) (ThinRange, error) {
	if begin == nil || length == nil {
		return ThinRange{}, fmt.Errorf("%w: %s without begin or length", ErrThinMetadata, what)
	}
	maxBlocks := uint64(math.MaxInt64 / blockBytes)
	if *length == 0 || *begin > maxBlocks || *length > maxBlocks-*begin {
		return ThinRange{}, fmt.Errorf("%w: %s of %d blocks at block %d", ErrThinMetadata, what, *length, *begin)
	}
	return ThinRange{Offset: int64(*begin) * blockBytes, Length: int64(*length) * blockBytes}, nil
}

// coalesce sorts ranges, refuses overlaps (the tools never report a block
// twice, so an overlap means the report is not understood) and joins
// ranges that touch.
func coalesce(rs []ThinRange) ([]ThinRange, error) {
	sort.Slice(rs, func(i, j int) bool { return rs[i].Offset < rs[j].Offset })
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 {
			last := &out[n-1]
			switch {
			case r.Offset < last.End():
				return nil, fmt.Errorf("%w: range [%d, %d) overlaps [%d, %d)", ErrThinMetadata, r.Offset, r.End(), last.Offset, last.End())
			case r.Offset == last.End():
				last.Length += r.Length
				continue
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// ParseThinDump reads `thin_dump --dev-id devID` and returns the mapped
// ranges of that thin device in increasing order, adjacent ones joined,
// and the pool's block size in bytes. A report without the device is an
// error: its mappings are unknown, not empty.
func ParseThinDump(out []byte, devID uint64) (ranges []ThinRange, blockBytes int64, err error) {
	sb, blockBytes, err := decodeSuperblock(out)
	if err != nil {
		return nil, 0, err
	}
	var dev *xmlDevice
	for i := range sb.Devices {
		d := &sb.Devices[i]
		if d.DevID == nil {
			return nil, 0, fmt.Errorf("%w: device without dev_id", ErrThinMetadata)
		}
		if *d.DevID != devID {
			continue
		}
		if dev != nil {
			return nil, 0, fmt.Errorf("%w: device %d reported twice", ErrThinMetadata, devID)
		}
		dev = d
	}
	if dev == nil {
		return nil, 0, fmt.Errorf("%w: thin device %d not in the report", ErrThinMetadata, devID)
	}
	for _, m := range dev.Ranges {
		r, err := blockRange(m.OriginBegin, m.Length, blockBytes, "range_mapping")
		if err != nil {
			return nil, 0, err
		}
		ranges = append(ranges, r)
	}
	one := uint64(1)
	for _, s := range dev.Singles {
		r, err := blockRange(s.OriginBlock, &one, blockBytes, "single_mapping")
		if err != nil {
			return nil, 0, err
		}
		ranges = append(ranges, r)
	}
	ranges, err = coalesce(ranges)
	return ranges, blockBytes, err
}

// ParseThinDelta reads `thin_delta --thin1 parent --thin2 child` and
// returns the ranges of the child that an incremental stream must carry,
// in increasing order, adjacent ones joined: those mapped differently
// (different), newly mapped (right_only) and those mapped in the parent
// but no longer in the child (left_only). The stream format has no
// discard, so the last kind travels as the zeros the child reads there,
// which rebuilds the child exactly on top of the parent. Ranges the two
// share (same) are left out. left and right must be the diff's devices.
func ParseThinDelta(out []byte, left, right uint64) (ranges []ThinRange, blockBytes int64, err error) {
	sb, blockBytes, err := decodeSuperblock(out)
	if err != nil {
		return nil, 0, err
	}
	if len(sb.Diffs) != 1 {
		return nil, 0, fmt.Errorf("%w: %d diffs in the report, want 1", ErrThinMetadata, len(sb.Diffs))
	}
	d := sb.Diffs[0]
	if d.Left == nil || d.Right == nil || *d.Left != left || *d.Right != right {
		return nil, 0, fmt.Errorf("%w: the diff is not of devices %d and %d", ErrThinMetadata, left, right)
	}
	// "same" entries are checked for shape but not sent.
	if _, err := diffRanges(d.Same, blockBytes, "same"); err != nil {
		return nil, 0, err
	}
	for _, kind := range []struct {
		name    string
		entries []xmlDiffEntry
	}{{"different", d.Different}, {"right_only", d.RightOnly}, {"left_only", d.LeftOnly}} {
		rs, err := diffRanges(kind.entries, blockBytes, kind.name)
		if err != nil {
			return nil, 0, err
		}
		ranges = append(ranges, rs...)
	}
	ranges, err = coalesce(ranges)
	return ranges, blockBytes, err
}

func diffRanges(entries []xmlDiffEntry, blockBytes int64, what string) ([]ThinRange, error) {
	var out []ThinRange
	for _, e := range entries {
		if len(e.Ranges) == 0 {
			r, err := blockRange(e.Begin, e.Length, blockBytes, what)
			if err != nil {
				return nil, err
			}
			out = append(out, r)
			continue
		}
		if e.Begin != nil || e.Length != nil {
			return nil, fmt.Errorf("%w: %s with both attributes and ranges", ErrThinMetadata, what)
		}
		for _, x := range e.Ranges {
			r, err := blockRange(x.Begin, x.Length, blockBytes, what)
			if err != nil {
				return nil, err
			}
			out = append(out, r)
		}
	}
	return out, nil
}

// MappedBytes is the sum of the ranges' lengths.
func MappedBytes(ranges []ThinRange) int64 {
	var n int64
	for _, r := range ranges {
		n += r.Length
	}
	return n
}
