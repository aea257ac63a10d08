package lvmthin

import (
	"context"
	"strings"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/command"
)

func TestArgv(t *testing.T) {
	tags := []string{"csi-thin.io/owned", "csi-thin.io/kind=volume"}
	for _, tc := range []struct {
		name string
		got  []string
		want string
	}{
		{"lvs", lvsArgs("vg/v-1", "vg/pool"),
			"lvs --reportformat json --units b --nosuffix -o lv_name,vg_name,lv_attr,lv_size,pool_lv,origin,lv_tags,data_percent,metadata_percent,lv_health_status,segtype,lv_when_full,discards,chunk_size,lv_time,vg_extent_size vg/v-1 vg/pool"},
		{"vgs", vgsArgs("vg"),
			"vgs --reportformat json --units b --nosuffix -o vg_name,vg_uuid,vg_size,vg_free,vg_extent_size,vg_free_count,vg_attr,vg_tags vg"},
		{"pvs", pvsArgs("/dev/vda"), "pvs --reportformat json --units b --nosuffix -o pv_name,vg_name,pv_size /dev/vda"},
		{"thin volume", createThinArgs("vg", "pool", "v-1", 1<<30, tags),
			"lvcreate --type thin --virtualsize 1073741824b --thinpool pool --name v-1 --addtag csi-thin.io/owned --addtag csi-thin.io/kind=volume vg"},
		{"snapshot", createSnapshotArgs("vg", "v-1", "s-1", tags[:1]),
			"lvcreate --snapshot --name s-1 --permission r --setactivationskip y --addtag csi-thin.io/owned vg/v-1"},
		{"clone", createWritableSnapshotArgs("vg", "s-1", "v-2", tags[:1]),
			"lvcreate --snapshot --name v-2 --permission rw --setactivationskip n --activate n --addtag csi-thin.io/owned vg/s-1"},
		{"extend", extendArgs("vg", "v-1", 2<<30), "lvextend --size 2147483648b vg/v-1"},
		{"remove", removeArgs("vg", "v-1"), "lvremove --yes vg/v-1"},
		{"activate", activateArgs("vg", "v-1"), "lvchange --activate y --ignoreactivationskip vg/v-1"},
		{"pool", createPoolArgs("vg", "pool", 4<<30, 16<<20, 64<<10, false, tags[:1]),
			"lvcreate --type thin-pool --size 4294967296b --poolmetadatasize 16777216b --chunksize 65536b --zero n --discards passdown --name pool --addtag csi-thin.io/owned vg"},
		{"pool zeroed", createPoolArgs("vg", "pool", 4<<30, 16<<20, 64<<10, true, nil),
			"lvcreate --type thin-pool --size 4294967296b --poolmetadatasize 16777216b --chunksize 65536b --zero y --discards passdown --name pool vg"},
		{"error when full", errorWhenFullArgs("vg", "pool"), "lvchange --errorwhenfull y vg/pool"},
		{"vgcreate", vgcreateArgs("vg", []string{"/dev/a", "/dev/b"}, tags[:1]), "vgcreate --addtag csi-thin.io/owned vg /dev/a /dev/b"},
		{"pvcreate", pvcreateArgs("/dev/a"), "pvcreate /dev/a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := strings.Join(tc.got, " "); got != tc.want {
				t.Errorf("argv\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

// TestConfigOptionFollowsCommand: --config goes right after the LVM
// command name, where every LVM command accepts it.
func TestConfigOptionFollowsCommand(t *testing.T) {
	f := &command.Fake{}
	f.On("lvm lvremove", "", 0, "")
	l := newLVM(f, "activation{udev_sync=0}")
	if _, err := l.run(context.Background(), removeArgs("vg", "v-1")...); err != nil {
		t.Fatal(err)
	}
	if got, want := f.Lines()[0], "lvm lvremove --config activation{udev_sync=0} --yes vg/v-1"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func TestPoolSizes(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name             string
		free, meta       int64
		wantData, wantMD int64
		wantErr          bool
	}{
		{"5 GiB disk", 1279 * 4 * mib, 0, (1279*4 - 2*20 - 4) * mib, 20 * mib, false},
		{"small loop file", 380 * mib, 0, (380 - 16 - 4) * mib, 8 * mib, false},
		{"explicit metadata", 1000 * 4 * mib, 30 * mib, (4000 - 64 - 4) * mib, 32 * mib, false},
		{"too small", 24 * mib, 0, 0, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, meta, err := poolSizes(tc.free, 4*mib, tc.meta)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if err == nil && (data != tc.wantData || meta != tc.wantMD) {
				t.Errorf("data %d MiB, metadata %d MiB; want %d, %d", data/mib, meta/mib, tc.wantData/mib, tc.wantMD/mib)
			}
		})
	}
}
