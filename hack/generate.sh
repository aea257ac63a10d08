#!/usr/bin/env bash
# generate.sh — regenerate what is derived from the Go API types:
#   pkg/api/v1alpha1/zz_generated.deepcopy.go
#   charts/csi-thin/files/crds/*.yaml (the CRDs; the chart installs them)
# controller-gen comes from the Go module proxy at the version pinned in
# versions.env (built once into the Go cache by `go run`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/hack/versions.env"
cd "$root"
cgen=(go run "sigs.k8s.io/controller-tools/cmd/controller-gen@$CONTROLLER_GEN_VERSION")
if command -v controller-gen >/dev/null && controller-gen --version | grep -qF "$CONTROLLER_GEN_VERSION"; then
	cgen=(controller-gen)
fi
# GOFLAGS=-mod=mod would make `go run pkg@version` refuse to run.
export GOFLAGS=
"${cgen[@]}" object:headerFile=hack/boilerplate.go.txt paths=./pkg/api/...
out=charts/csi-thin/files/crds
rm -rf "$out" && mkdir -p "$out"
# allowDangerousTypes: ThinNode reports fill levels as float64 percentages.
"${cgen[@]}" crd:allowDangerousTypes=true paths=./pkg/api/... output:crd:artifacts:config="$out"
echo "generated deepcopy and $(ls "$out" | wc -l) CRDs in $out"
