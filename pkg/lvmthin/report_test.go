package lvmthin

import (
	"os"
	"path/filepath"
	"testing"
)

// The fixtures in testdata/ are real outputs of lvm2 2.03.16 captured in
// the test VM (see testdata/README.md for the commands).

func readFixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func lvByName(t *testing.T, lvs []LV, name string) LV {
	t.Helper()
	for _, lv := range lvs {
		if lv.Name == name {
			return lv
		}
	}
	t.Fatalf("no LV %s in the report", name)
	return LV{}
}

const (
	fixtureVol   = "v-0123456789abcdef0123456789abcdef"
	fixtureSnap  = "s-0123456789abcdef0123456789abcdef"
	fixtureClone = "v-fedcba9876543210fedcba9876543210"
)

func TestParseLVs(t *testing.T) {
	lvs, err := ParseLVs(readFixture(t, "lvs-vg.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(lvs) != 5 {
		t.Fatalf("%d LVs, want 5 (pool, volume, snapshot, half-made clone, foreign)", len(lvs))
	}
	pool := lvByName(t, lvs, "pool")
	if !pool.Attr.IsThinPool() || !pool.Attr.Active() || pool.Attr.Problem() != "" ||
		pool.Size != 1<<30 || pool.ChunkSize != 64<<10 || pool.WhenFull != "error" || pool.Discards != "passdown" ||
		pool.DataPercent <= 0 || pool.MetadataPercent <= 0 || pool.Segtype != "thin-pool" {
		t.Errorf("pool = %+v", pool)
	}
	vol := lvByName(t, lvs, fixtureVol)
	m := decodeTags(vol.Tags)
	if !vol.Attr.IsThinVolume() || !vol.Attr.Writeable() || vol.Pool != "pool" || vol.Size != 256<<20 ||
		!m.Owned || m.Kind != kindVolume || m.Name != "pvc-one" || m.FsType != "ext4" || m.CreatedAt.UnixNano() != 1764124429123456789 {
		t.Errorf("volume = %+v, tags %+v", vol, m)
	}
	if vol.Time.IsZero() {
		t.Errorf("lv_time not parsed")
	}
	snap := lvByName(t, lvs, fixtureSnap)
	if snap.Attr.Writeable() || !snap.Attr.SkipActivation || snap.Attr.Active() || snap.Origin != fixtureVol ||
		snap.DataPercent != -1 {
		t.Errorf("snapshot = %+v", snap)
	}
	clone := lvByName(t, lvs, fixtureClone)
	if cm := lvMeta(&clone); !cm.Creating || clone.Attr.SkipActivation || !clone.Attr.Writeable() || clone.Origin != fixtureSnap {
		t.Errorf("half-made clone = %+v", clone)
	}
	if foreign := lvByName(t, lvs, "foreign"); decodeTags(foreign.Tags).Owned {
		t.Errorf("foreign LV parsed as ours")
	}
}

func TestParseFullPool(t *testing.T) {
	lvs, err := ParseLVs(readFixture(t, "lvs-pool-full.json"))
	if err != nil {
		t.Fatal(err)
	}
	pool := lvByName(t, lvs, "pool")
	if pool.DataPercent != 100 || pool.Attr.Problem() == "" {
		t.Errorf("full pool = %+v (problem %q)", pool, pool.Attr.Problem())
	}
}

func TestParseVGsAndPVs(t *testing.T) {
	vgs, err := ParseVGs(readFixture(t, "vgs.json"))
	if err != nil || len(vgs) != 1 {
		t.Fatalf("vgs = %+v, %v", vgs, err)
	}
	vg := vgs[0]
	if vg.Name != "vgcap" || vg.ExtentSize != 4<<20 || vg.Size <= 0 || vg.Free <= 0 || vg.Free > vg.Size ||
		vg.FreeCount*vg.ExtentSize != vg.Free || len(vg.Tags) != 1 || vg.Tags[0] != tagOwned {
		t.Errorf("vg = %+v", vg)
	}
	pvs, err := ParsePVs(readFixture(t, "pvs.json"))
	if err != nil || len(pvs) != 1 || pvs[0].Name != "/dev/vda" || pvs[0].VG != "vgcap" || pvs[0].Size <= 0 {
		t.Errorf("pvs = %+v, %v", pvs, err)
	}
}

func TestParseRejectsBadNumbers(t *testing.T) {
	for _, in := range []string{
		`{"report":[{"lv":[{"lv_name":"x","lv_attr":"Vwi-a-t---","lv_size":"1.00g"}]}]}`,
		`{"report":[{"lv":[{"lv_name":"x","lv_attr":"Vwi"}]}]}`,
		`{"report":[{"lv":[{"lv_name":"x","lv_attr":"Vwi-a-t---","data_percent":"lots"}]}]}`,
		`{"report":[{"vg":[{"vg_name":"x","vg_free":"-"}]}]}`,
		`not json`,
	} {
		if _, err := ParseLVs([]byte(in)); err == nil {
			if _, err := ParseVGs([]byte(in)); err == nil {
				t.Errorf("accepted %s", in)
			}
		}
	}
}

func TestLVAttr(t *testing.T) {
	for _, tc := range []struct {
		attr    string
		pool    bool
		active  bool
		skip    bool
		problem string
	}{
		{"twi-aot---", true, true, false, ""},
		{"twi-aotzD-", true, true, false, "out of data space"},
		{"twi-aotzM-", true, true, false, "metadata read-only"},
		{"twi---tzF-", true, false, false, "failed"},
		{"Vri---t--k", false, false, true, ""},
		{"Vwi-aot---", false, true, false, ""},
	} {
		a, err := ParseLVAttr(tc.attr)
		if err != nil {
			t.Fatal(err)
		}
		if a.IsThinPool() != tc.pool || a.Active() != tc.active || a.SkipActivation != tc.skip || a.Problem() != tc.problem {
			t.Errorf("%s: %+v, problem %q", tc.attr, a, a.Problem())
		}
	}
}
