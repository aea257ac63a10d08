// Package rbac checks that the chart grants the node agent (which runs on
// every node, privileged, next to user workloads) no more than it needs:
// a compromised node must not be able to read secrets, delete anything,
// or grant itself more.
package rbac

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"github.com/csi-thin/csi-thin/internal/testenv"
)

// helmPaths are where helm is looked for besides PATH.
var helmPaths = []string{"/var/cache/k8s-recipe/bin/helm"}

func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

// render returns the chart's manifests, rendered by helm when it is
// installed, else the copy rendered into deploy/ (kept in sync by the
// chart's owner).
func render(t *testing.T) (docs [][]byte, source string) {
	root := repoRoot(t)
	helm, err := exec.LookPath("helm")
	for _, p := range helmPaths {
		if err != nil {
			if _, serr := os.Stat(p); serr == nil {
				helm, err = p, nil
			}
		}
	}
	var out []byte
	if err == nil {
		cmd := exec.Command(helm, "template", "csi-thin", filepath.Join(root, "charts", "csi-thin"), "--namespace", "csi-thin", "--kube-version", "1.34.0")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if out, err = cmd.Output(); err != nil {
			t.Fatalf("helm template: %v: %s", err, stderr.String())
		}
		source = "helm template"
	} else {
		if out, err = os.ReadFile(filepath.Join(root, "deploy", "kubernetes", "csi-thin.yaml")); err != nil {
			testenv.Missing(t, "neither helm nor deploy/kubernetes/csi-thin.yaml is available")
		}
		source = "deploy/kubernetes/csi-thin.yaml"
	}
	for _, d := range bytes.Split(out, []byte("\n---")) {
		if len(bytes.TrimSpace(d)) > 0 {
			docs = append(docs, d)
		}
	}
	return docs, source
}

type object struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
}

// nodeAllowed is everything the node agent may do: group/resource → verbs.
var nodeAllowed = map[string]string{
	"csi-thin.io/thinvolumes":          "get list watch update patch",
	"csi-thin.io/thinsnapshots":        "get list watch update patch",
	"csi-thin.io/thinvolumes/status":   "update patch",
	"csi-thin.io/thinsnapshots/status": "update patch",
	"csi-thin.io/thinnodes":            "get list watch create",
	"csi-thin.io/thinnodes/status":     "update patch",
	"/nodes":                           "get",
	"events.k8s.io/events":             "create patch",
	"/events":                          "create patch",
}

func TestNodeAgentIsLeastPrivilege(t *testing.T) {
	docs, source := render(t)
	roles := map[string]rbacv1.ClusterRole{}
	var bindings []rbacv1.ClusterRoleBinding
	var roleBindings []rbacv1.RoleBinding
	for _, d := range docs {
		var o object
		if err := yaml.Unmarshal(d, &o); err != nil {
			t.Fatalf("%s: %v", source, err)
		}
		switch o.Kind {
		case "ClusterRole":
			var r rbacv1.ClusterRole
			if err := yaml.Unmarshal(d, &r); err != nil {
				t.Fatal(err)
			}
			roles[r.Name] = r
		case "ClusterRoleBinding":
			var b rbacv1.ClusterRoleBinding
			if err := yaml.Unmarshal(d, &b); err != nil {
				t.Fatal(err)
			}
			bindings = append(bindings, b)
		case "RoleBinding":
			var b rbacv1.RoleBinding
			if err := yaml.Unmarshal(d, &b); err != nil {
				t.Fatal(err)
			}
			roleBindings = append(roleBindings, b)
		}
	}
	// Every role bound to the node agent's service account.
	var nodeRoles []string
	for _, b := range bindings {
		for _, s := range b.Subjects {
			if s.Kind == "ServiceAccount" && strings.HasSuffix(s.Name, "-node") {
				nodeRoles = append(nodeRoles, b.RoleRef.Name)
			}
		}
	}
	for _, b := range roleBindings {
		for _, s := range b.Subjects {
			if s.Kind == "ServiceAccount" && strings.HasSuffix(s.Name, "-node") {
				t.Errorf("node agent has a namespaced RoleBinding %s to %s: review it here", b.Name, b.RoleRef.Name)
			}
		}
	}
	if len(nodeRoles) == 0 {
		t.Fatalf("%s: no ClusterRoleBinding for the node agent's service account", source)
	}
	rules := 0
	for _, name := range nodeRoles {
		role, ok := roles[name]
		if !ok {
			t.Fatalf("node agent bound to %s, which the chart does not define", name)
		}
		if role.AggregationRule != nil {
			t.Errorf("node role %s aggregates other roles", name)
		}
		for _, r := range role.Rules {
			rules++
			if len(r.NonResourceURLs) > 0 {
				t.Errorf("node role %s grants non-resource URLs %v", name, r.NonResourceURLs)
			}
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					allowed := nodeAllowed[g+"/"+res]
					for _, v := range r.Verbs {
						if g == "*" || res == "*" || v == "*" || !strings.Contains(" "+allowed+" ", " "+v+" ") {
							t.Errorf("node role %s grants %s on %s/%s: not needed by the node agent", name, v, g, res)
						}
					}
				}
			}
		}
	}
	t.Logf("rbac (%s): node agent bound to %v, %d rules, all within the allow-list", source, nodeRoles, rules)
}
