#!/usr/bin/env bash
# import.sh ARCHIVE... — import OCI image archives (mkimg.sh's MKIMG_OUT,
# hack/image.sh's IMAGE_OUT) into the containerd of every node of the
# running cluster (k8s.io namespace, what the kubelets see).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/env.sh"
(($#)) || { sed -n '2,4p' "$0" >&2; exit 2; }
nodes=$(cluster_nodes)
for ((n = 1; n <= nodes; n++)); do
	for a in "$@"; do in_node "$n" ctr -n k8s.io images import "$a" >/dev/null; done
	log "import.sh: $(node_name "$n"): imported $*"
done
