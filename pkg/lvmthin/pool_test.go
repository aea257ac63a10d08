package lvmthin

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/command"
)

// failingFirst fails the first `failures` commands that start with prefix
// (exit 5, LVM's "prohibited" refusal) and passes everything else to Fake.
type failingFirst struct {
	*command.Fake
	prefix   string
	failures int
}

func (r *failingFirst) Run(ctx context.Context, name string, args ...string) (command.Result, error) {
	line := command.Call{Name: name, Args: args}.String()
	if r.failures > 0 && strings.HasPrefix(line, r.prefix) {
		r.failures--
		r.Fake.Calls = append(r.Fake.Calls, command.Call{Name: name, Args: args})
		stderr := "Activation of logical volume vgcap/pool is prohibited while logical volume vgcap/pool_tmeta is active."
		return command.Result{ExitCode: 5, Stderr: []byte(stderr)}, &command.Error{Cmd: append([]string{name}, args...), ExitCode: 5, Stderr: stderr, Err: errors.New("exit status 5")}
	}
	return r.Fake.Run(ctx, name, args...)
}

// TestInactivePoolActivated: start-up activates an inactive pool; when LVM
// refuses because a component of the pool is active on its own (what an
// activation killed half-way leaves), the components are deactivated and
// the activation tried once more; a component LVM will not deactivate (in
// use) ends the start with both errors.
func TestInactivePoolActivated(t *testing.T) {
	inactive := strings.Replace(withExtent(string(readFixture(t, "lvs-vg.json"))), `"lv_attr":"twi-aot---"`, `"lv_attr":"twi---t---"`, 1)
	const (
		activate     = "lvm lvchange --activate y --ignoreactivationskip vgcap/pool"
		offMeta      = "lvm lvchange --activate n vgcap/pool_tmeta"
		offData      = "lvm lvchange --activate n vgcap/pool_tdata"
		componentErr = "deactivating its component _tmeta"
		secondErr    = "its components deactivated first"
	)
	for _, tc := range []struct {
		name          string
		refusals      int // activations LVM refuses
		componentExit int
		want          []string
		wantErr       string
	}{
		{"activated at once", 0, 0, []string{activate}, ""},
		{"a component left active", 1, 0, []string{activate, offMeta, offData, activate}, ""},
		{"refused again", 2, 0, []string{activate, offMeta, offData, activate}, secondErr},
		{"a component in use", 1, 5, []string{activate, offMeta}, componentErr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &command.Fake{}
			f.On(lvsPrefix+" vgcap", inactive, 0, "")
			f.On("lvm lvchange --activate y", "", 0, "")
			f.On("lvm lvchange --activate n", "", tc.componentExit, "  Logical volume vgcap/pool_tmeta in use.")
			r := &failingFirst{Fake: f, prefix: activate, failures: tc.refusals}
			cfg, err := Config{VG: "vgcap", ThinPool: "pool", NodeName: "n1", Runner: r}.withDefaults()
			if err != nil {
				t.Fatal(err)
			}
			b := &Backend{cfg: cfg, lvm: newLVM(r, "")}
			_, err = b.ensurePool(context.Background())
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("ensurePool: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "prohibited")):
				t.Fatalf("ensurePool error %v; want one saying %q and LVM's refusal", err, tc.wantErr)
			}
			if got := mutations(f); strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("commands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}
