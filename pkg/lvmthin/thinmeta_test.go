package lvmthin

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const blk = 128 * 512 // data_block_size="128" sectors

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseThinDumpOfTheTools(t *testing.T) {
	for _, tc := range []struct {
		file  string
		devID uint64
		want  []ThinRange
	}{
		// Blocks 0-3 (a range mapping and two singles), 10 and 30.
		{"thin_dump-dev2.xml", 2, []ThinRange{{0, 4 * blk}, {10 * blk, blk}, {30 * blk, blk}}},
		// The whole pool's dump holds both devices: pick the right one.
		{"thin_metadata.xml", 1, []ThinRange{{0, 4 * blk}, {10 * blk, blk}, {20 * blk, blk}}},
		{"thin_metadata.xml", 2, []ThinRange{{0, 4 * blk}, {10 * blk, blk}, {30 * blk, blk}}},
	} {
		got, bb, err := ParseThinDump(readTestdata(t, tc.file), tc.devID)
		if err != nil {
			t.Fatalf("%s dev %d: %v", tc.file, tc.devID, err)
		}
		if bb != blk {
			t.Errorf("%s: block size %d, want %d", tc.file, bb, blk)
		}
		if !slices.Equal(tc.want, got) {
			t.Errorf("%s dev %d: ranges %v, want %v", tc.file, tc.devID, got, tc.want)
		}
		if MappedBytes(got) != 6*blk {
			t.Errorf("%s dev %d: %d mapped bytes, want %d", tc.file, tc.devID, MappedBytes(got), 6*blk)
		}
	}
}

func TestParseThinDeltaOfTheTools(t *testing.T) {
	// Block 2 rewritten (different), 20 dropped (left_only: sent as the
	// zeros the child reads), 30 added (right_only); 0-1, 3 and 10 same.
	want := []ThinRange{{2 * blk, blk}, {20 * blk, blk}, {30 * blk, blk}}
	for _, file := range []string{"thin_delta-1-2.xml", "thin_delta-1-2-verbose.xml"} {
		got, bb, err := ParseThinDelta(readTestdata(t, file), 1, 2)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if bb != blk {
			t.Errorf("%s: block size %d", file, bb)
		}
		if !slices.Equal(want, got) {
			t.Errorf("%s: ranges %v, want %v", file, got, want)
		}
	}
	if _, _, err := ParseThinDelta(readTestdata(t, "thin_delta-1-2.xml"), 2, 1); !errors.Is(err, ErrThinMetadata) {
		t.Errorf("a diff of other devices: %v, want ErrThinMetadata", err)
	}
}

func TestParseThinDumpCoalescesAndOrders(t *testing.T) {
	in := `<superblock data_block_size="8">
  <device dev_id="5">
    <single_mapping origin_block="9" data_block="1" time="0"/>
    <range_mapping origin_begin="3" data_begin="7" length="2" time="0"/>
    <single_mapping origin_block="5" data_block="2" time="0"/>
    <single_mapping origin_block="0" data_block="3" time="0"/>
  </device>
  <device dev_id="6"/>
</superblock>`
	got, bb, err := ParseThinDump([]byte(in), 5)
	if err != nil {
		t.Fatal(err)
	}
	want := []ThinRange{{0, 4096}, {3 * 4096, 3 * 4096}, {9 * 4096, 4096}}
	if bb != 4096 || !slices.Equal(want, got) {
		t.Errorf("got %v (block %d), want %v", got, bb, want)
	}
	// A device with no mappings is mapped nowhere.
	got, _, err = ParseThinDump([]byte(in), 6)
	if err != nil || len(got) != 0 {
		t.Errorf("empty device: %v, %v", got, err)
	}
}

func TestParseThinMetadataRefuses(t *testing.T) {
	dump := func(body string) string {
		return `<superblock data_block_size="128"><device dev_id="1">` + body + `</device></superblock>`
	}
	for _, tc := range []struct{ name, in string }{
		{"empty", ""},
		{"not xml", "thin_dump: bad checksum in superblock"},
		{"truncated", strings.TrimSuffix(dump(`<single_mapping origin_block="1"/>`), "</superblock>")},
		{"wrong root", `<metadata data_block_size="128"/>`},
		{"no block size", `<superblock><device dev_id="1"/></superblock>`},
		{"zero block size", `<superblock data_block_size="0"><device dev_id="1"/></superblock>`},
		{"huge block size", `<superblock data_block_size="18446744073709551615"><device dev_id="1"/></superblock>`},
		{"device missing", `<superblock data_block_size="128"><device dev_id="2"/></superblock>`},
		{"device twice", `<superblock data_block_size="128"><device dev_id="1"/><device dev_id="1"/></superblock>`},
		{"device without id", `<superblock data_block_size="128"><device/><device dev_id="1"/></superblock>`},
		{"negative block", dump(`<single_mapping origin_block="-1"/>`)},
		{"not a number", dump(`<single_mapping origin_block="x"/>`)},
		{"single without block", dump(`<single_mapping data_block="1"/>`)},
		{"range without length", dump(`<range_mapping origin_begin="1"/>`)},
		{"zero length", dump(`<range_mapping origin_begin="1" length="0"/>`)},
		{"range past int64", dump(`<range_mapping origin_begin="1" length="1152921504606846975"/>`)},
		{"overlap", dump(`<range_mapping origin_begin="1" length="3"/><single_mapping origin_block="2"/>`)},
		{"trailing garbage", dump(``) + `<superblock/>`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _, err := ParseThinDump([]byte(tc.in), 1)
			if !errors.Is(err, ErrThinMetadata) {
				t.Fatalf("got %v, %v; want ErrThinMetadata", r, err)
			}
		})
	}
	delta := func(body string) string {
		return `<superblock data_block_size="128"><diff left="1" right="2">` + body + `</diff></superblock>`
	}
	for _, tc := range []struct{ name, in string }{
		{"no diff", `<superblock data_block_size="128"/>`},
		{"two diffs", `<superblock data_block_size="128"><diff left="1" right="2"/><diff left="1" right="2"/></superblock>`},
		{"diff without devices", `<superblock data_block_size="128"><diff/></superblock>`},
		{"entry without length", delta(`<different begin="1"/>`)},
		{"bad same", delta(`<same begin="1" length="0"/>`)},
		{"range without begin", delta(`<left_only><range length="1"/></left_only>`)},
		{"attributes and ranges", delta(`<right_only begin="1" length="1"><range begin="1" length="1"/></right_only>`)},
		{"overlap", delta(`<different begin="1" length="2"/><right_only begin="2" length="1"/>`)},
	} {
		t.Run("delta "+tc.name, func(t *testing.T) {
			r, _, err := ParseThinDelta([]byte(tc.in), 1, 2)
			if !errors.Is(err, ErrThinMetadata) {
				t.Fatalf("got %v, %v; want ErrThinMetadata", r, err)
			}
		})
	}
}

// FuzzParseThinDump: whatever the tool prints, the parser does not panic
// and either refuses with ErrThinMetadata or returns ranges a producer can
// write in order: positive, increasing, apart, within int64, whole blocks.
func FuzzParseThinDump(f *testing.F) {
	f.Add(readTestdata(f, "thin_dump-dev2.xml"))
	f.Add(readTestdata(f, "thin_metadata.xml"))
	f.Add(readTestdata(f, "thin_delta-1-2.xml"))
	f.Add(readTestdata(f, "thin_delta-1-2-verbose.xml"))
	f.Fuzz(func(t *testing.T, out []byte) {
		for _, parse := range []func() ([]ThinRange, int64, error){
			func() ([]ThinRange, int64, error) { return ParseThinDump(out, 2) },
			func() ([]ThinRange, int64, error) { return ParseThinDelta(out, 1, 2) },
		} {
			rs, bb, err := parse()
			if err != nil {
				if !errors.Is(err, ErrThinMetadata) {
					t.Fatalf("refused with an error of another kind: %v", err)
				}
				continue
			}
			var end int64 = -1
			for _, r := range rs {
				if r.Length <= 0 || r.Offset <= end || r.End() < r.Offset || r.Offset%bb != 0 || r.Length%bb != 0 {
					t.Fatalf("range %+v after one ending at %d (block %d)", r, end, bb)
				}
				end = r.End()
			}
		}
	})
}
