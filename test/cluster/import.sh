#!/usr/bin/env bash
# import.sh ARCHIVE... — import OCI image archives (mkimg.sh's MKIMG_OUT,
# hack/image.sh's IMAGE_OUT) into the containerd of every node of the
# running cluster (k8s.io namespace, what the kubelets see).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/env.sh"
(($#)) || { sed -n '2,4p' "$0" >&2; exit 2; }
# vm_import N ARCHIVE: into VM node N's inbox (vm-node.sh), and wait for
# its answer. Written under another name first: the VM takes only *.tar.
vm_import() {
	local inbox name end
	inbox=$(node_vm_dir "$1")/import name=$(basename "$2" .tar)-$$
	cp "$2" "$inbox/$name.part"
	mv "$inbox/$name.part" "$inbox/$name.tar"
	end=$((SECONDS + 600))
	until [[ -e $inbox/$name.done ]]; do
		[[ ! -e $inbox/$name.failed ]] || { log "import.sh: $(node_name "$1") could not import $2"; return 1; }
		((SECONDS < end)) || { log "import.sh: $(node_name "$1") did not import $2 in 600 s"; return 1; }
		sleep 1
	done
	rm -f "$inbox/$name.done"
}
nodes=$(cluster_nodes)
for ((n = 1; n <= nodes; n++)); do
	for a in "$@"; do
		if node_is_vm "$n"; then
			vm_import "$n" "$a"
		else
			in_node "$n" ctr -n k8s.io images import "$a" >/dev/null
		fi
	done
	log "import.sh: $(node_name "$n"): imported $*"
done
