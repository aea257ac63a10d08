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

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"github.com/csi-thin/csi-thin/internal/kubeapi"
	"github.com/csi-thin/csi-thin/internal/testenv"
)

// helmPaths are where helm is looked for besides PATH.
var helmPaths = []string{filepath.Join(kubeapi.BinDir(), "helm")}

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
	"csi-thin.io/thinvolumes":               "get list watch update patch",
	"csi-thin.io/thinsnapshots":             "get list watch update patch",
	"csi-thin.io/thinvolumes/status":        "update patch",
	"csi-thin.io/thinsnapshots/status":      "update patch",
	"csi-thin.io/thingroupsnapshots":        "get list watch update patch",
	"csi-thin.io/thingroupsnapshots/status": "update patch",
	"csi-thin.io/thinnodes":                 "get list watch create",
	"csi-thin.io/thinnodes/status":          "update patch",
	"/nodes":                                "get",
	"events.k8s.io/events":                  "create patch",
	"/events":                               "create patch",
	// Its transfer certificate (signed only for its own node) and the
	// transfer trust (the CA certificate and token public key: public).
	"certificates.k8s.io/certificatesigningrequests": "create get",
	"/configmaps": "get",
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

// TestNodeAgentWritesAreNodeScoped: RBAC cannot limit a node agent to its
// own node's objects, so every csi-thin resource the node role may write
// must be covered, for create and update, by the chart's own-node
// ValidatingAdmissionPolicy, bound with Deny, for the node agent's
// service account. A write verb added to the role without the policy
// fails here; TestNodeAgentScopedToItsNode (test/e2e) proves on a real
// cluster that the policy denies another node's objects.
func TestNodeAgentWritesAreNodeScoped(t *testing.T) {
	docs, source := render(t)
	var role rbacv1.ClusterRole
	var policy admissionregistrationv1.ValidatingAdmissionPolicy
	var binding admissionregistrationv1.ValidatingAdmissionPolicyBinding
	for _, d := range docs {
		var o object
		if err := yaml.Unmarshal(d, &o); err != nil {
			t.Fatalf("%s: %v", source, err)
		}
		var err error
		switch {
		case o.Kind == "ClusterRole" && o.Metadata.Name == "csi-thin-node":
			err = yaml.Unmarshal(d, &role)
		case o.Kind == "ValidatingAdmissionPolicy" && o.Metadata.Name == "csi-thin-node-own-node":
			err = yaml.Unmarshal(d, &policy)
		case o.Kind == "ValidatingAdmissionPolicyBinding" && o.Metadata.Name == "csi-thin-node-own-node":
			err = yaml.Unmarshal(d, &binding)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if role.Name == "" || policy.Name == "" || binding.Name == "" {
		t.Fatalf("%s: node role %q, own-node policy %q, binding %q: want all three", source, role.Name, policy.Name, binding.Name)
	}
	if binding.Spec.PolicyName != policy.Name || len(binding.Spec.ValidationActions) != 1 || binding.Spec.ValidationActions[0] != admissionregistrationv1.Deny {
		t.Errorf("binding %+v does not deny with %s", binding.Spec, policy.Name)
	}
	if len(policy.Spec.MatchConditions) != 1 || !strings.Contains(policy.Spec.MatchConditions[0].Expression, `"system:serviceaccount:csi-thin:csi-thin-node"`) {
		t.Errorf("policy matches %+v, want the node agent's service account", policy.Spec.MatchConditions)
	}
	covered := map[string]map[admissionregistrationv1.OperationType]bool{}
	for _, r := range policy.Spec.MatchConstraints.ResourceRules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				key := g + "/" + res
				if covered[key] == nil {
					covered[key] = map[admissionregistrationv1.OperationType]bool{}
				}
				for _, op := range r.Operations {
					covered[key][op] = true
				}
			}
		}
	}
	writes := 0
	for _, r := range role.Rules {
		for _, g := range r.APIGroups {
			if g != "csi-thin.io" {
				continue
			}
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					op := map[string]admissionregistrationv1.OperationType{"create": admissionregistrationv1.Create,
						"update": admissionregistrationv1.Update, "patch": admissionregistrationv1.Update, "delete": admissionregistrationv1.Delete}[v]
					if op == "" {
						continue
					}
					writes++
					if !covered[g+"/"+res][op] {
						t.Errorf("the node role may %s %s/%s, which the own-node policy does not check", v, g, res)
					}
				}
			}
		}
	}
	t.Logf("rbac (%s): %d csi-thin write grants of the node agent, all checked by %s", source, writes, policy.Name)
}
