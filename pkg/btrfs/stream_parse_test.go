package btrfs

import "testing"

func TestParseDuTotal(t *testing.T) {
	tests := []struct {
		out  string
		want int64
		ok   bool
	}{
		{"     Total   Exclusive  Set shared  Filename\n 269484032           0   269484032  /p/csi-thin/snapshots/s-1\n", 269484032, true},
		{"     Total   Exclusive  Set shared  Filename\n         0           0           0  /p/x y\n", 0, true},
		{"", 0, false},
		{"     Total   Exclusive  Set shared  Filename\n", 0, false},
		{"     Total   Exclusive  Set shared  Filename\n -5 0 0 /p\n", 0, false},
		{"     Total   Exclusive  Set shared  Filename\n 1.00GiB 0 0 /p\n", 0, false},
		{"Total\n1 0 0 /a\n2 0 0 /b\n", 0, false},
	}
	for _, tc := range tests {
		got, err := parseDuTotal([]byte(tc.out))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("%q: got %d, %v; want %d, ok=%v", tc.out, got, err, tc.want, tc.ok)
		}
	}
}

func TestParseSubvolumeUUIDs(t *testing.T) {
	out := `csi-thin/receiving/v-1/s-2
	Name: 			s-2
	UUID: 			4157c25c-8197-ef43-abe1-5afe6dd1af13
	Parent UUID: 		a75d4c4d-5f3e-7d4d-85e2-2aa1f6a859b9
	Received UUID: 		c8958dee-823f-1440-bd4b-219d0817a30a
	Creation time: 		2026-12-04 14:30:01 +0000
	Flags: 			readonly
`
	u, err := parseSubvolumeUUIDs([]byte(out))
	if err != nil || u.uuid != "4157c25c-8197-ef43-abe1-5afe6dd1af13" || u.parent != "a75d4c4d-5f3e-7d4d-85e2-2aa1f6a859b9" || u.received != "c8958dee-823f-1440-bd4b-219d0817a30a" {
		t.Fatalf("got %+v, %v", u, err)
	}
	for _, bad := range []string{"", "Name: x\n", "UUID: -\n"} {
		if _, err := parseSubvolumeUUIDs([]byte(bad)); err == nil {
			t.Errorf("%q: parsed", bad)
		}
	}
}
