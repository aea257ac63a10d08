package v1alpha1

import (
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// The chart's CRDs are generated from these types (hack/generate.sh). This
// test catches a type changed without regenerating: every JSON field of
// the Go types must be in the CRD schema and vice versa.

const crdDir = "../../../charts/csi-thin/files/crds"

func loadCRD(t *testing.T, plural string) *apiextensionsv1.CustomResourceDefinition {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(crdDir, Group+"_"+plural+".yaml"))
	if err != nil {
		t.Fatalf("read CRD: %v (run hack/generate.sh)", err)
	}
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := yaml.UnmarshalStrict(data, crd); err != nil {
		t.Fatalf("parse CRD %s: %v", plural, err)
	}
	return crd
}

func TestCRDsMatchTypes(t *testing.T) {
	tests := []struct {
		plural string
		kind   string
		obj    any
	}{
		{"thinvolumes", "ThinVolume", ThinVolume{}},
		{"thinsnapshots", "ThinSnapshot", ThinSnapshot{}},
		{"thinnodes", "ThinNode", ThinNode{}},
		{"thingroupsnapshots", "ThinGroupSnapshot", ThinGroupSnapshot{}},
	}
	for _, tc := range tests {
		t.Run(tc.kind, func(t *testing.T) {
			crd := loadCRD(t, tc.plural)
			if crd.Spec.Group != Group || crd.Spec.Names.Kind != tc.kind || crd.Name != tc.plural+"."+Group {
				t.Fatalf("CRD identity: group %q kind %q name %q", crd.Spec.Group, crd.Spec.Names.Kind, crd.Name)
			}
			if crd.Spec.Scope != apiextensionsv1.ClusterScoped {
				t.Errorf("scope %q, want Cluster", crd.Spec.Scope)
			}
			if len(crd.Spec.Versions) != 1 || crd.Spec.Versions[0].Name != GroupVersion.Version ||
				!crd.Spec.Versions[0].Served || !crd.Spec.Versions[0].Storage {
				t.Fatalf("versions: %+v", crd.Spec.Versions)
			}
			v := crd.Spec.Versions[0]
			if v.Subresources == nil || v.Subresources.Status == nil {
				t.Errorf("status subresource missing: the node agent writes status through it")
			}
			root := v.Schema.OpenAPIV3Schema
			for _, part := range []string{"spec", "status"} {
				f, ok := reflect.TypeOf(tc.obj).FieldByName(strings.ToUpper(part[:1]) + part[1:])
				if !ok {
					if _, inSchema := root.Properties[part]; inSchema {
						t.Errorf("schema has %s, the Go type does not", part)
					}
					continue
				}
				s, ok := root.Properties[part]
				if !ok {
					t.Fatalf("schema lacks %s", part)
				}
				compare(t, part, f.Type, &s)
			}
		})
	}
}

var metaTypes = map[reflect.Type]bool{
	reflect.TypeOf(metav1.Time{}):      true,
	reflect.TypeOf(metav1.Condition{}): true,
}

// compare checks that the struct type's JSON fields and the schema's
// properties are the same set, recursing into nested structs of ours.
func compare(t *testing.T, path string, typ reflect.Type, s *apiextensionsv1.JSONSchemaProps) {
	t.Helper()
	for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
		typ = typ.Elem()
		if s.Items != nil && s.Items.Schema != nil {
			s = s.Items.Schema
		}
	}
	if typ.Kind() != reflect.Struct || metaTypes[typ] {
		return
	}
	goFields := map[string]reflect.Type{}
	collectFields(typ, goFields)
	var missing, extra []string
	for name, ft := range goFields {
		p, ok := s.Properties[name]
		if !ok {
			missing = append(missing, name)
			continue
		}
		compare(t, path+"."+name, ft, &p)
	}
	for name := range s.Properties {
		if _, ok := goFields[name]; !ok {
			extra = append(extra, name)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 || len(extra) > 0 {
		t.Errorf("%s: CRD schema out of date (run hack/generate.sh): Go fields not in schema %v, schema fields not in Go %v", path, missing, extra)
	}
}

func collectFields(typ reflect.Type, out map[string]reflect.Type) {
	for i := range typ.NumField() {
		f := typ.Field(i)
		tag := f.Tag.Get("json")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if name == "" && strings.Contains(","+opts, ",inline") {
			collectFields(f.Type, out)
			continue
		}
		out[name] = f.Type
	}
}

func TestSchemeKnowsAllKinds(t *testing.T) {
	s := runtimeScheme(t)
	for _, kind := range []string{"ThinVolume", "ThinVolumeList", "ThinSnapshot", "ThinSnapshotList", "ThinNode", "ThinNodeList"} {
		if !s.Recognizes(GroupVersion.WithKind(kind)) {
			t.Errorf("scheme does not know %s", kind)
		}
	}
}

func TestDeepCopyIsDeep(t *testing.T) {
	orig := &ThinVolume{Spec: ThinVolumeSpec{
		Parameters: map[string]string{"a": "1"},
		Source:     &VolumeSource{Kind: VolumeSourceSnapshot, ID: "s-0123456789abcdef0123456789abcdef"},
	}}
	cp := orig.DeepCopy()
	cp.Spec.Parameters["a"] = "2"
	cp.Spec.Source.ID = "changed"
	if orig.Spec.Parameters["a"] != "1" || orig.Spec.Source.ID == "changed" {
		t.Fatal("DeepCopy shares memory with the original")
	}
}
