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
