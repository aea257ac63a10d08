package lvmthin

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The report layer: `lvs`/`vgs`/`pvs --reportformat json --units b
// --nosuffix -o <fields>` parsed into typed structs. LVM prints every value
// as a JSON string ("1073741824", "3.12", "" for unknown), so each report
// row is decoded into a private all-string struct first and converted here,
// once, with errors that name the field.

// lvFields are the columns every lvs call asks for, in one place so the
// parser and the argv builder cannot drift apart.
var lvFields = []string{
	"lv_name", "vg_name", "lv_attr", "lv_size", "pool_lv", "origin", "lv_tags",
	"data_percent", "metadata_percent", "lv_health_status", "segtype",
	"lv_when_full", "discards", "chunk_size", "lv_time",
	// The VG's extent size on every row: start-up learns it from the one
	// lvs it runs instead of a vgs of its own.
	"vg_extent_size",
}

var vgFields = []string{
	"vg_name", "vg_uuid", "vg_size", "vg_free", "vg_extent_size", "vg_free_count", "vg_attr", "vg_tags",
}

var pvFields = []string{"pv_name", "vg_name", "pv_size"}

// LV is one row of an lvs report.
type LV struct {
	Name    string
	VG      string
	Attr    LVAttr
	Size    int64
	Pool    string // thin pool of a thin LV
	Origin  string // origin of a thin snapshot while the origin exists
	Tags    []string
	Segtype string
	// DataPercent and MetadataPercent are -1 when LVM does not know them
	// (an inactive pool or thin LV).
	DataPercent     float64
	MetadataPercent float64
	// HealthStatus is lv_health_status: "" when fine, else e.g.
	// "out_of_data", "metadata_read_only", "failed", "partial".
	HealthStatus string
	WhenFull     string // thin pool: "error" or "queue"
	Discards     string // thin pool: "passdown", "nopassdown", "ignore"
	ChunkSize    int64
	Time         time.Time // creation time as LVM recorded it
	// VGExtentSize is the extent size of the LV's VG (0 if not reported).
	VGExtentSize int64
}

// HasTag reports whether the LV carries tag exactly.
func (lv *LV) HasTag(tag string) bool {
	return slices.Contains(lv.Tags, tag)
}

type rawLV struct {
	Name            string `json:"lv_name"`
	VG              string `json:"vg_name"`
	Attr            string `json:"lv_attr"`
	Size            string `json:"lv_size"`
	Pool            string `json:"pool_lv"`
	Origin          string `json:"origin"`
	Tags            string `json:"lv_tags"`
	DataPercent     string `json:"data_percent"`
	MetadataPercent string `json:"metadata_percent"`
	HealthStatus    string `json:"lv_health_status"`
	Segtype         string `json:"segtype"`
	WhenFull        string `json:"lv_when_full"`
	Discards        string `json:"discards"`
	ChunkSize       string `json:"chunk_size"`
	Time            string `json:"lv_time"`
	VGExtentSize    string `json:"vg_extent_size"`
}

// UnmarshalJSON converts LVM's all-string row into typed fields.
func (lv *LV) UnmarshalJSON(data []byte) error {
	var r rawLV
	if err := json.Unmarshal(data, &r); err != nil {
		return err
	}
	attr, err := ParseLVAttr(r.Attr)
	if err != nil {
		return fmt.Errorf("lv %s: %w", r.Name, err)
	}
	out := LV{
		Name: r.Name, VG: r.VG, Attr: attr, Pool: r.Pool, Origin: r.Origin,
		Tags: splitTags(r.Tags), Segtype: r.Segtype, HealthStatus: r.HealthStatus,
		WhenFull: r.WhenFull, Discards: r.Discards,
	}
	if out.Size, err = parseBytes("lv_size", r.Size); err != nil {
		return fmt.Errorf("lv %s: %w", r.Name, err)
	}
	if out.ChunkSize, err = parseBytes("chunk_size", r.ChunkSize); err != nil {
		return fmt.Errorf("lv %s: %w", r.Name, err)
	}
	if out.VGExtentSize, err = parseBytes("vg_extent_size", r.VGExtentSize); err != nil {
		return fmt.Errorf("lv %s: %w", r.Name, err)
	}
	if out.DataPercent, err = parsePercent("data_percent", r.DataPercent); err != nil {
		return fmt.Errorf("lv %s: %w", r.Name, err)
	}
	if out.MetadataPercent, err = parsePercent("metadata_percent", r.MetadataPercent); err != nil {
		return fmt.Errorf("lv %s: %w", r.Name, err)
	}
	if r.Time != "" {
		// lv_time is informational; an odd format must not hide the LV.
		if t, err := time.Parse("2006-01-02 15:04:05 -0700", r.Time); err == nil {
			out.Time = t
		}
	}
	*lv = out
	return nil
}

// VG is one row of a vgs report.
type VG struct {
	Name       string
	UUID       string
	Size       int64
	Free       int64
	ExtentSize int64
	FreeCount  int64
	Attr       string
	Tags       []string
}

type rawVG struct {
	Name       string `json:"vg_name"`
	UUID       string `json:"vg_uuid"`
	Size       string `json:"vg_size"`
	Free       string `json:"vg_free"`
	ExtentSize string `json:"vg_extent_size"`
	FreeCount  string `json:"vg_free_count"`
	Attr       string `json:"vg_attr"`
	Tags       string `json:"vg_tags"`
}

// UnmarshalJSON converts LVM's all-string row into typed fields.
func (vg *VG) UnmarshalJSON(data []byte) error {
	var r rawVG
	if err := json.Unmarshal(data, &r); err != nil {
		return err
	}
	out := VG{Name: r.Name, UUID: r.UUID, Attr: r.Attr, Tags: splitTags(r.Tags)}
	var err error
	for _, f := range []struct {
		name string
		raw  string
		dst  *int64
	}{
		{"vg_size", r.Size, &out.Size},
		{"vg_free", r.Free, &out.Free},
		{"vg_extent_size", r.ExtentSize, &out.ExtentSize},
		{"vg_free_count", r.FreeCount, &out.FreeCount},
	} {
		if *f.dst, err = parseBytes(f.name, f.raw); err != nil {
			return fmt.Errorf("vg %s: %w", r.Name, err)
		}
	}
	*vg = out
	return nil
}

// PV is one row of a pvs report.
type PV struct {
	Name string
	VG   string // empty for an orphan PV
	Size int64
}

type rawPV struct {
	Name string `json:"pv_name"`
	VG   string `json:"vg_name"`
	Size string `json:"pv_size"`
}

// UnmarshalJSON converts LVM's all-string row into typed fields.
func (pv *PV) UnmarshalJSON(data []byte) error {
	var r rawPV
	if err := json.Unmarshal(data, &r); err != nil {
		return err
	}
	size, err := parseBytes("pv_size", r.Size)
	if err != nil {
		return fmt.Errorf("pv %s: %w", r.Name, err)
	}
	*pv = PV{Name: r.Name, VG: r.VG, Size: size}
	return nil
}

// report is LVM's JSON envelope: {"report":[{"lv":[...]}]} (one element
// per command in `lvm fullreport`, one in lvs/vgs/pvs).
type report struct {
	Report []struct {
		LV []LV `json:"lv"`
		VG []VG `json:"vg"`
		PV []PV `json:"pv"`
	} `json:"report"`
}

func parseReport(out []byte) (*report, error) {
	var r report
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("parse lvm json report: %w", err)
	}
	return &r, nil
}

// ParseLVs parses `lvs --reportformat json` output.
func ParseLVs(out []byte) ([]LV, error) {
	r, err := parseReport(out)
	if err != nil {
		return nil, err
	}
	var lvs []LV
	for _, part := range r.Report {
		lvs = append(lvs, part.LV...)
	}
	return lvs, nil
}

// ParseVGs parses `vgs --reportformat json` output.
func ParseVGs(out []byte) ([]VG, error) {
	r, err := parseReport(out)
	if err != nil {
		return nil, err
	}
	var vgs []VG
	for _, part := range r.Report {
		vgs = append(vgs, part.VG...)
	}
	return vgs, nil
}

// ParsePVs parses `pvs --reportformat json` output.
func ParsePVs(out []byte) ([]PV, error) {
	r, err := parseReport(out)
	if err != nil {
		return nil, err
	}
	var pvs []PV
	for _, part := range r.Report {
		pvs = append(pvs, part.PV...)
	}
	return pvs, nil
}

func parseBytes(field, s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("field %s: %q is not a byte count (was --units b --nosuffix given?): %w", field, s, err)
	}
	return n, nil
}

func parsePercent(field, s string) (float64, error) {
	if s == "" {
		return -1, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("field %s: %q is not a percentage: %w", field, s, err)
	}
	return f, nil
}

// splitTags splits lv_tags/vg_tags: LVM joins tags with commas, which the
// tag alphabet itself excludes.
func splitTags(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}
