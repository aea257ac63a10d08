package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/csi-thin/csi-thin/internal/kubeapi"
)

// These tests need helm but no cluster: lint, render, check the rendered
// objects, and keep deploy/kubernetes and the pinned versions current.

const chartDir = "../../charts/csi-thin"

func helmBin(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	if p := filepath.Join(kubeapi.BinDir(), "helm"); fileExists(p) {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("helm not found (test/cluster/build.sh helm builds it)")
	}
	t.Skip("helm not found")
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(helmBin(t), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), errors.New(err.Error() + ": " + stderr.String())
	}
	return string(out), nil
}

func TestChartLint(t *testing.T) {
	for _, values := range [][]string{nil, {"values-e2e.yaml"}, {"values-e2e.yaml", "values-e2e-vm.yaml"}} {
		args := []string{"lint", "--strict", chartDir}
		for _, v := range values {
			args = append(args, "-f", v)
		}
		if out, err := helm(t, args...); err != nil {
			t.Errorf("helm lint %v: %v\n%s", values, err, out)
		}
	}
}

// TestChartControllersPlaced: the controller's and the snapshot
// controller's nodeSelectors reach their pods (values-e2e-vm.yaml keeps
// both off the VM nodes, whose containerd has only the node plugin's image).
func TestChartControllersPlaced(t *testing.T) {
	objs := render(t, "--set", "controller.nodeSelector.pool=btrfs",
		"--set", "snapshotController.install=true", "--set", "snapshotController.nodeSelector.pool=btrfs")
	for _, name := range []string{"Deployment/csi-thin-controller", "Deployment/csi-thin-snapshot-controller"} {
		if sel := decode[appsv1.Deployment](t, objs, name).Spec.Template.Spec.NodeSelector; sel["pool"] != "btrfs" || len(sel) != 1 {
			t.Errorf("%s: nodeSelector %v; want pool=btrfs", name, sel)
		}
	}
}

// object is one rendered manifest, kept raw for typed decoding.
type object struct {
	Kind string `json:"kind"`
	Meta struct {
		Name string `json:"name"`
	} `json:"metadata"`
	raw []byte
}

func render(t *testing.T, args ...string) map[string]object {
	t.Helper()
	out, err := helm(t, append([]string{"template", "csi-thin", chartDir, "--namespace", "csi-thin",
		"--api-versions", "snapshot.storage.k8s.io/v1/VolumeSnapshotClass", "--kube-version", "1.34.0"}, args...)...)
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	objs := map[string]object{}
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(out)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var o object
		if err := yaml.Unmarshal(doc, &o); err != nil {
			t.Fatalf("rendered YAML: %v\n%s", err, doc)
		}
		if o.Kind == "" {
			continue
		}
		o.raw = doc
		objs[o.Kind+"/"+o.Meta.Name] = o
	}
	return objs
}

func decode[T any](t *testing.T, objs map[string]object, key string) *T {
	t.Helper()
	o, ok := objs[key]
	if !ok {
		keys := make([]string, 0, len(objs))
		for k := range objs {
			keys = append(keys, k)
		}
		t.Fatalf("%s not rendered; have %v", key, keys)
	}
	v := new(T)
	if err := yaml.UnmarshalStrict(o.raw, v); err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return v
}

func TestChartRendersDriver(t *testing.T) {
	objs := render(t)
	for _, crd := range []string{"thinvolumes", "thinsnapshots", "thinnodes"} {
		c := decode[apiextensionsv1.CustomResourceDefinition](t, objs, "CustomResourceDefinition/"+crd+".csi-thin.io")
		if c.Annotations["helm.sh/resource-policy"] != "keep" {
			t.Errorf("CRD %s is not kept on uninstall", crd)
		}
	}
	d := decode[storagev1.CSIDriver](t, objs, "CSIDriver/csi-thin.io")
	if *d.Spec.AttachRequired || !*d.Spec.PodInfoOnMount || !*d.Spec.StorageCapacity || *d.Spec.FSGroupPolicy != storagev1.FileFSGroupPolicy {
		t.Errorf("CSIDriver spec %+v", d.Spec)
	}
	dep := decode[appsv1.Deployment](t, objs, "Deployment/csi-thin-controller")
	args := map[string][]string{}
	for _, c := range dep.Spec.Template.Spec.Containers {
		args[c.Name] = c.Args
	}
	for _, want := range []string{"--enable-capacity", "--capacity-ownerref-level=2", "--extra-create-metadata",
		"--feature-gates=Topology=true", "--leader-election", "--timeout=120s", "--strict-topology"} {
		if !slices.Contains(args["csi-provisioner"], want) {
			t.Errorf("provisioner lacks %s: %v", want, args["csi-provisioner"])
		}
	}
	for _, c := range []string{"csi-thin", "csi-resizer", "csi-snapshotter"} {
		if args[c] == nil {
			t.Errorf("controller lacks container %s", c)
		}
	}
	// Every client of the Kubernetes API that a burst of claims or
	// snapshots goes through runs above its default 5 requests/s.
	snapc := decode[appsv1.Deployment](t, render(t, "--set", "snapshotController.install=true"), "Deployment/csi-thin-snapshot-controller")
	args["snapshot-controller"] = snapc.Spec.Template.Spec.Containers[0].Args
	for _, c := range []string{"csi-provisioner", "csi-resizer", "csi-snapshotter", "snapshot-controller"} {
		for _, want := range []string{"--kube-api-qps=100", "--kube-api-burst=200"} {
			if !slices.Contains(args[c], want) {
				t.Errorf("%s lacks %s: %v", c, want, args[c])
			}
		}
	}
	ds := decode[appsv1.DaemonSet](t, objs, "DaemonSet/csi-thin-node-default")
	node := ds.Spec.Template.Spec.Containers[0]
	if node.SecurityContext == nil || !*node.SecurityContext.Privileged {
		t.Error("node container is not privileged")
	}
	bidi := map[string]bool{}
	for _, m := range node.VolumeMounts {
		if m.MountPropagation != nil && *m.MountPropagation == "Bidirectional" {
			bidi[m.MountPath] = true
		}
	}
	if !bidi["/var/lib/kubelet"] || !bidi["/var/lib/csi-thin"] {
		t.Errorf("Bidirectional mounts %v, want the kubelet and state dirs", bidi)
	}
	for _, want := range []string{"--mode=node", "--backend=btrfs", "--pool-path=/var/lib/csi-thin/btrfs",
		"--endpoint=unix:///var/lib/kubelet/plugins/csi-thin.io/csi.sock"} {
		if !slices.Contains(node.Args, want) {
			t.Errorf("node args lack %s: %v", want, node.Args)
		}
	}
	lvm := decode[storagev1.StorageClass](t, objs, "StorageClass/csi-thin-lvm")
	if lvm.Parameters["csi.storage.k8s.io/fstype"] != "ext4" || !slices.Contains(lvm.MountOptions, "discard") || !*lvm.AllowVolumeExpansion {
		t.Errorf("lvm StorageClass %+v", lvm)
	}
	if _, ok := objs["VolumeSnapshotClass/csi-thin"]; !ok {
		t.Error("no VolumeSnapshotClass")
	}
}

func TestChartPoolGroups(t *testing.T) {
	values := filepath.Join(t.TempDir(), "values.yaml")
	groups := `
pools:
  - name: ssd
    nodeSelector: {disk: ssd}
    backend: lvmthin
    lvmthin: {vg: vg0, thinPool: tp, devices: [/dev/sdb, /dev/sdc], metadataFullPercent: 70, zeroNewBlocks: false, lvmConfig: "activation{udev_sync=0}"}
    overprovisionRatio: 3
    dataFullPercent: 90
  - name: small
    nodeSelector: {disk: none}
    backend: btrfs
    btrfs: {poolPath: /var/lib/csi-thin/btrfs, quota: simple}
    loopFile: /var/lib/csi-thin/pool.img
    loopSize: 5Gi
    overprovisionRatio: 2
    dataFullPercent: 95
`
	if err := os.WriteFile(values, []byte(groups), 0o600); err != nil {
		t.Fatal(err)
	}
	objs := render(t, "-f", values)
	for name, want := range map[string][]string{
		"ssd": {"--backend=lvmthin", "--vg=vg0", "--thin-pool=tp", "--devices=/dev/sdb,/dev/sdc", "--metadata-full-percent=70", "--overprovision-ratio=3",
			"--lvm-zero-new-blocks=false", "--lvm-config=activation{udev_sync=0}", "--freeze-state-dir=/var/lib/csi-thin/freeze/ssd"},
		"small": {"--backend=btrfs", "--btrfs-quota=simple", "--loop-file=/var/lib/csi-thin/pool.img", "--loop-size=5Gi"},
	} {
		ds := decode[appsv1.DaemonSet](t, objs, "DaemonSet/csi-thin-node-"+name)
		args := ds.Spec.Template.Spec.Containers[0].Args
		for _, w := range want {
			if !slices.Contains(args, w) {
				t.Errorf("%s: args lack %s: %v", name, w, args)
			}
		}
	}
	if ds := decode[appsv1.DaemonSet](t, objs, "DaemonSet/csi-thin-node-ssd"); ds.Spec.Template.Spec.NodeSelector["disk"] != "ssd" {
		t.Errorf("nodeSelector %v", ds.Spec.Template.Spec.NodeSelector)
	}
}

// TestChartProbes: the kubelet restarts a driver pod only when its process
// no longer serves (/healthz); the pool's health, or the controller's
// cache sync, only takes the pod out of Ready (/readyz). The node's probe
// timing comes from values.
func TestChartProbes(t *testing.T) {
	objs := render(t, "--set", "node.livenessProbe.timeoutSeconds=9", "--set", "node.readinessProbe.timeoutSeconds=20")
	node := decode[appsv1.DaemonSet](t, objs, "DaemonSet/csi-thin-node-default").Spec.Template.Spec.Containers[0]
	ctrl := decode[appsv1.Deployment](t, objs, "Deployment/csi-thin-controller").Spec.Template.Spec.Containers[0]
	for _, tc := range []struct {
		name        string
		probe       *corev1.Probe
		path        string
		timeoutSecs int32
	}{
		{"node liveness", node.LivenessProbe, "/healthz", 9},
		{"node readiness", node.ReadinessProbe, "/readyz", 20},
		{"controller liveness", ctrl.LivenessProbe, "/healthz", 0},
		{"controller readiness", ctrl.ReadinessProbe, "/readyz", 0},
	} {
		if tc.probe == nil || tc.probe.HTTPGet == nil {
			t.Errorf("%s: no HTTP probe", tc.name)
			continue
		}
		if tc.probe.HTTPGet.Path != tc.path || tc.probe.TimeoutSeconds != tc.timeoutSecs {
			t.Errorf("%s: path %s timeout %ds, want %s %ds", tc.name, tc.probe.HTTPGet.Path, tc.probe.TimeoutSeconds, tc.path, tc.timeoutSecs)
		}
	}
	def := decode[appsv1.DaemonSet](t, render(t), "DaemonSet/csi-thin-node-default").Spec.Template.Spec.Containers[0]
	if p := def.LivenessProbe; p.TimeoutSeconds != 5 || p.FailureThreshold != 6 || p.InitialDelaySeconds != 10 {
		t.Errorf("default node liveness %+v, want 5s timeout, 6 failures, 10s delay", p)
	}
}

func TestChartSchemaRejectsBadValues(t *testing.T) {
	for _, bad := range [][]string{
		{"--set", "pools[0].backend=zfs"},
		{"--set", "node.kubeletDir=relative/path"},
		{"--set", "unknownKey=1"},
		{"--set", "storageClasses[0].volumeBindingMode=Later"},
		{"--set", "node.livenessProbe.timeoutSeconds=0"},
		{"--set", "node.readinessProbe.exec=x"},
	} {
		if _, err := helm(t, append([]string{"template", "x", chartDir, "--kube-version", "1.34.0"}, bad...)...); err == nil {
			t.Errorf("values %v accepted", bad)
		}
	}
}

func TestManifestsCurrent(t *testing.T) {
	helmBin(t)
	want, err := exec.Command("bash", "../../hack/manifests.sh", "--stdout").Output()
	if err != nil {
		t.Fatalf("manifests.sh: %v", err)
	}
	got, err := os.ReadFile("../../deploy/kubernetes/csi-thin.yaml")
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("deploy/kubernetes/csi-thin.yaml is out of date (%v): run hack/manifests.sh", err)
	}
}

// TestVersionsPinnedOnce: the sidecar tags in the chart match
// hack/versions.env (what the cluster scripts build and import).
func TestVersionsPinnedOnce(t *testing.T) {
	env, err := os.ReadFile("../../hack/versions.env")
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for _, l := range strings.Split(string(env), "\n") {
		// NAME=${NAME:-value}
		if k, v, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(l, "#") {
			vars[k] = strings.TrimSuffix(strings.TrimPrefix(v, "${"+k+":-"), "}")
		}
	}
	values, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"csi-provisioner": "PROVISIONER_VERSION", "csi-resizer": "RESIZER_VERSION",
		"csi-snapshotter": "SNAPSHOTTER_VERSION", "snapshot-controller": "SNAPSHOTTER_VERSION"} {
		ref := "registry.k8s.io/sig-storage/" + name + ":" + vars[v]
		if vars[v] == "" || !bytes.Contains(values, []byte(ref)) {
			t.Errorf("values.yaml does not use %s (%s in versions.env)", ref, v)
		}
	}
	for _, k := range []string{"repository: " + vars["CSI_THIN_IMAGE"], "tag: " + vars["CSI_THIN_TAG"]} {
		if !bytes.Contains(values, []byte(k)) {
			t.Errorf("values.yaml lacks %q", k)
		}
	}
}

// TestChartControllerPodsRestricted: the controller-side pods run with no
// privilege at all: non-root (one uid and fsGroup for the pod, so the
// sidecars reach the driver's 0600 socket in the shared emptyDir),
// RuntimeDefault seccomp, and every container without capabilities,
// privilege escalation or a writable root filesystem. `make test-e2e`
// shows they still work.
func TestChartControllerPodsRestricted(t *testing.T) {
	objs := render(t, "--set", "snapshotController.install=true")
	for _, name := range []string{"Deployment/csi-thin-controller", "Deployment/csi-thin-snapshot-controller"} {
		spec := decode[appsv1.Deployment](t, objs, name).Spec.Template.Spec
		psc := spec.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 ||
			psc.RunAsGroup == nil || *psc.RunAsGroup == 0 || psc.FSGroup == nil || *psc.FSGroup != *psc.RunAsUser ||
			psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: pod securityContext %+v, want non-root with fsGroup = runAsUser and RuntimeDefault seccomp", name, psc)
		}
		if spec.HostPID || spec.HostNetwork || spec.HostIPC {
			t.Errorf("%s: shares a host namespace", name)
		}
		for _, v := range spec.Volumes {
			if v.HostPath != nil {
				t.Errorf("%s: hostPath volume %s", name, v.Name)
			}
		}
		for _, c := range spec.Containers {
			sc := c.SecurityContext
			if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
				sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
				sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 ||
				sc.Privileged != nil && *sc.Privileged || sc.RunAsUser != nil || sc.RunAsNonRoot != nil && !*sc.RunAsNonRoot {
				t.Errorf("%s container %s: securityContext %+v", name, c.Name, sc)
			}
		}
	}
}

// TestChartCommandPrefix: an nsenter prefix gets the node pods the host's
// PID namespace (without it, nsenter -t 1 enters the pod's own init), and
// LVM pools share the host's LVM lock dir with or without a prefix, so
// that the agent's LVM commands and the host's serialise on one set of
// locks. btrfs pools and no prefix need neither.
func TestChartCommandPrefix(t *testing.T) {
	values := filepath.Join(t.TempDir(), "values.yaml")
	pools := `
pools:
  - name: lvm
    nodeSelector: {disk: ssd}
    backend: lvmthin
    lvmthin: {vg: vg0, thinPool: tp, devices: [], metadataFullPercent: 80, zeroNewBlocks: true, lvmConfig: ""}
    overprovisionRatio: 5
    dataFullPercent: 95
  - name: fs
    nodeSelector: {disk: none}
    backend: btrfs
    btrfs: {poolPath: /var/lib/csi-thin/btrfs, quota: auto}
    overprovisionRatio: 5
    dataFullPercent: 95
`
	if err := os.WriteFile(values, []byte(pools), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		prefix  string
		hostPID bool
	}{
		{"", false},
		{"nsenter -t 1 -m -u -i -n -p --", true},
		{"nsenter --target=1 --mount --", true},
		{"ionice -c3", false},
	} {
		objs := render(t, "-f", values, "--set-string", "node.commandPrefix="+tc.prefix)
		for _, group := range []string{"lvm", "fs"} {
			spec := decode[appsv1.DaemonSet](t, objs, "DaemonSet/csi-thin-node-"+group).Spec.Template.Spec
			if spec.HostPID != tc.hostPID {
				t.Errorf("prefix %q, pool %s: hostPID %v, want %v", tc.prefix, group, spec.HostPID, tc.hostPID)
			}
			if tc.prefix != "" && !slices.Contains(spec.Containers[0].Args, "--command-prefix="+tc.prefix) {
				t.Errorf("prefix %q not passed: %v", tc.prefix, spec.Containers[0].Args)
			}
			lockVolume := ""
			for _, v := range spec.Volumes {
				if v.HostPath != nil && v.HostPath.Path == "/run/lock/lvm" {
					lockVolume = v.Name
				}
			}
			mounted := false
			for _, m := range spec.Containers[0].VolumeMounts {
				mounted = mounted || m.Name == lockVolume && m.MountPath == "/run/lock/lvm" && !m.ReadOnly
			}
			if want := group == "lvm"; mounted != want || (lockVolume != "") != want {
				t.Errorf("prefix %q, pool %s: host LVM lock dir mounted %v (volume %q), want %v", tc.prefix, group, mounted, lockVolume, want)
			}
		}
	}
}

// TestChartNodeScopePolicy: the policy that keeps each node agent to its
// own node's objects is rendered, bound with Deny, and matches the node
// agent's service account on every csi-thin resource and status
// subresource it may write. TestNodeAgentScopedToItsNode proves on the
// cluster that it denies and allows what it should.
func TestChartNodeScopePolicy(t *testing.T) {
	objs := render(t)
	p := decode[admissionregistrationv1.ValidatingAdmissionPolicy](t, objs, "ValidatingAdmissionPolicy/csi-thin-node-own-node")
	b := decode[admissionregistrationv1.ValidatingAdmissionPolicyBinding](t, objs, "ValidatingAdmissionPolicyBinding/csi-thin-node-own-node")
	if b.Spec.PolicyName != p.Name || !slices.Equal(b.Spec.ValidationActions, []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny}) {
		t.Errorf("binding %+v does not deny with policy %s", b.Spec, p.Name)
	}
	if p.Spec.FailurePolicy == nil || *p.Spec.FailurePolicy != admissionregistrationv1.Fail {
		t.Errorf("failurePolicy %v, want Fail", p.Spec.FailurePolicy)
	}
	if len(p.Spec.MatchConditions) != 1 || !strings.Contains(p.Spec.MatchConditions[0].Expression, `"system:serviceaccount:csi-thin:csi-thin-node"`) {
		t.Errorf("match conditions %+v, want the node agent's service account", p.Spec.MatchConditions)
	}
	covered := map[string]bool{}
	for _, r := range p.Spec.MatchConstraints.ResourceRules {
		if !slices.Contains(r.APIGroups, "csi-thin.io") || !slices.Contains(r.Operations, admissionregistrationv1.Create) || !slices.Contains(r.Operations, admissionregistrationv1.Update) {
			continue
		}
		for _, res := range r.Resources {
			covered[res] = true
		}
	}
	for _, res := range []string{"thinvolumes", "thinvolumes/status", "thinsnapshots", "thinsnapshots/status", "thinnodes", "thinnodes/status"} {
		if !covered[res] {
			t.Errorf("policy does not cover create and update of %s", res)
		}
	}
}

// The export VolumeSnapshotClass names its Secret by reference, and the
// node agent and the controller may get exactly the export Secrets and
// nothing more.
func TestChartSnapshotExport(t *testing.T) {
	for key := range render(t) {
		if strings.Contains(key, "-export") {
			t.Errorf("default values render %s", key)
		}
	}
	objs := render(t, "--set", "snapshotExport.volumeSnapshotClass.create=true",
		"--set", "snapshotExport.volumeSnapshotClass.secretNamespace=backup",
		"--set", "snapshotExport.volumeSnapshotClass.secretName=s3",
		"--set", "snapshotExport.secrets[0].namespace=other", "--set", "snapshotExport.secrets[0].name=s3-b")
	class := decode[struct {
		Driver     string            `json:"driver"`
		Parameters map[string]string `json:"parameters"`
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Metadata   map[string]any    `json:"metadata"`
		Deletion   string            `json:"deletionPolicy"`
	}](t, objs, "VolumeSnapshotClass/csi-thin-export")
	if class.Parameters["csi-thin.io/export-secret-namespace"] != "backup" || class.Parameters["csi-thin.io/export-secret-name"] != "s3" || len(class.Parameters) != 2 {
		t.Errorf("export class parameters %v", class.Parameters)
	}
	retained := decode[struct {
		Parameters map[string]string `json:"parameters"`
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Metadata   map[string]any    `json:"metadata"`
		Driver     string            `json:"driver"`
		Deletion   string            `json:"deletionPolicy"`
	}](t, render(t, "--set", "snapshotExport.volumeSnapshotClass.create=true", "--set", "snapshotExport.volumeSnapshotClass.retain=true",
		"--set", "snapshotExport.volumeSnapshotClass.secretNamespace=backup", "--set", "snapshotExport.volumeSnapshotClass.secretName=s3"),
		"VolumeSnapshotClass/csi-thin-export")
	if retained.Parameters["csi-thin.io/export-retain"] != "true" {
		t.Errorf("retained export class parameters %v", retained.Parameters)
	}
	for i, want := range []struct{ namespace, name string }{{"other", "s3-b"}, {"backup", "s3"}} {
		key := "csi-thin-node-export-" + string(rune('0'+i))
		role := decode[rbacv1.Role](t, objs, "Role/"+key)
		wantRule := rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{want.name}, Verbs: []string{"get"}}
		if role.Namespace != want.namespace || len(role.Rules) != 1 || !equalRule(role.Rules[0], wantRule) {
			t.Errorf("Role %s in %s: %+v, want only get on Secret %s", key, role.Namespace, role.Rules, want.name)
		}
		binding := decode[rbacv1.RoleBinding](t, objs, "RoleBinding/"+key)
		var subjects []string
		for _, s := range binding.Subjects {
			subjects = append(subjects, s.Kind+" "+s.Namespace+"/"+s.Name)
		}
		// The controller deletes the exports of snapshots deleted on a node
		// gone from the cluster.
		wantSubjects := []string{"ServiceAccount csi-thin/csi-thin-node", "ServiceAccount csi-thin/csi-thin-controller"}
		if binding.Namespace != want.namespace || binding.RoleRef.Name != key || !slices.Equal(subjects, wantSubjects) {
			t.Errorf("RoleBinding %s in %s: role %s, subjects %q; want %q", key, binding.Namespace, binding.RoleRef.Name, subjects, wantSubjects)
		}
	}
	if _, err := helm(t, "template", "x", chartDir, "--kube-version", "1.34.0", "--set", "snapshotExport.volumeSnapshotClass.create=true"); err == nil {
		t.Error("an export class without its Secret rendered")
	}
}

func equalRule(a, b rbacv1.PolicyRule) bool {
	return slices.Equal(a.APIGroups, b.APIGroups) && slices.Equal(a.Resources, b.Resources) &&
		slices.Equal(a.ResourceNames, b.ResourceNames) && slices.Equal(a.Verbs, b.Verbs) && len(a.NonResourceURLs) == 0
}
