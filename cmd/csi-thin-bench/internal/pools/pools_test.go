package pools

import "testing"

func TestParseBtrfsUsed(t *testing.T) {
	out := []byte("Overall:\n    Device size:\t\t        4294967296\n    Used:\t\t\t            294912\n    Free (estimated):\t\t        3741319168\t(min: 1874853888)\n")
	got, err := parseBtrfsUsed(out)
	if err != nil || got != 294912 {
		t.Errorf("parseBtrfsUsed = %d, %v; want 294912", got, err)
	}
	if _, err := parseBtrfsUsed([]byte("nothing")); err == nil {
		t.Error("missing Used line was not an error")
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 16384: "16 KiB", 1536: "1.5 KiB", 1 << 30: "1 GiB", -(3 << 20): "-3 MiB", 150 << 20: "150 MiB"} {
		if got := HumanBytes(n); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestParseThinPool(t *testing.T) {
	status := "0 8388608 thin-pool 3 150/4096 2048/65536 - rw discard_passdown queue_if_no_space - 1024\n"
	table := "0 8388608 thin-pool 253:0 253:1 128 0 1 skip_block_zeroing\n"
	u, err := parseThinPool(status, table)
	if err != nil {
		t.Fatal(err)
	}
	if u.PoolBytes != 2048*128*512 || u.MetadataBytes != 150*4096 || u.HasHost {
		t.Errorf("parseThinPool = %+v", u)
	}
	if _, err := parseThinPool("0 1 linear 8:0 0", table); err == nil {
		t.Error("a linear target was accepted")
	}
}
