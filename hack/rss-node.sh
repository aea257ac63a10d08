#!/usr/bin/env bash
# rss-node.sh — the memory of the real node plugin (--mode=node) against a
# real etcd + kube-apiserver on loopback, on a btrfs loop-file pool.
#
# It starts the node agent, waits for its ThinNode to be healthy, prints
# /proc/PID/status (idle), then runs $N rounds of CSI calls through a
# controller (the same binary, --mode=controller) and the node plugin
# (hack/rssprobe/csiload: create, snapshot, restore, stage, publish, write,
# and back), scrapes /metrics and /readyz (the pool check), and prints the status again
# (peak), the Go runtime's memory statistics, and the largest mappings of
# /proc/PID/smaps (what the resident set is made of).
# Evidence for docs/performance.md (RSS goal). Needs root (loop, mount),
# btrfs-progs, openssl and etcd/kube-apiserver/kubectl (looked up on PATH
# and in the e2e cluster's cache, /var/cache/k8s-recipe/bin).
#
#   hack/rss-node.sh [binary]     (default: builds bin/csi-thin)
#   N=20 KEEP=1 HOOK='cmd' hack/rss-node.sh   (KEEP: leave the temp dir; HOOK: run cmd PID BINARY at the end)
#   HOOK=/tmp/pagemap hack/rss-node.sh   (resident pages by ELF section: hack/rssprobe/pagemap)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-20}
export PATH=$PATH:/var/cache/k8s-recipe/bin
for t in etcd kube-apiserver kubectl openssl mkfs.btrfs; do
	command -v "$t" >/dev/null || { echo "rss-node: $t not found" >&2; exit 1; }
done
bin=${1:-}
if [[ -z $bin ]]; then
	(cd "$root" && make -s build)
	bin=$root/bin/csi-thin
fi
tmp=$(mktemp -d /tmp/rss-node.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	findmnt -rn -o TARGET | grep "^$tmp/mnt/" | sort -r | xargs -r -n1 umount 2>/dev/null || true
	if mountpoint -q "$tmp/pool"; then umount "$tmp/pool" || true; fi
	losetup -j "$tmp/pool.img" -O NAME -n 2>/dev/null | xargs -r -n1 losetup -d || true
	[[ -n ${KEEP:-} ]] || rm -rf "$tmp"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
etcd_port=$(port) peer_port=$(port) api_port=$(port) health_port=$(port) metrics_port=$(port)

etcd --data-dir "$tmp/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
	--advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$peer_port" \
	--initial-advertise-peer-urls "http://127.0.0.1:$peer_port" --initial-cluster "default=http://127.0.0.1:$peer_port" \
	>"$tmp/etcd.log" 2>&1 &
pids+=($!)
openssl genrsa -out "$tmp/sa.key" 2048 2>/dev/null
openssl rsa -in "$tmp/sa.key" -pubout -out "$tmp/sa.pub" 2>/dev/null
token=$(openssl rand -hex 16)
echo "$token,admin,admin,system:masters" >"$tmp/tokens.csv"
kube-apiserver --etcd-servers "http://127.0.0.1:$etcd_port" --bind-address 127.0.0.1 --secure-port "$api_port" \
	--cert-dir "$tmp/certs" --token-auth-file "$tmp/tokens.csv" --authorization-mode RBAC \
	--service-account-issuer https://kubernetes.default.svc --service-account-key-file "$tmp/sa.pub" \
	--service-account-signing-key-file "$tmp/sa.key" --service-cluster-ip-range 10.0.0.0/24 \
	>"$tmp/apiserver.log" 2>&1 &
pids+=($!)
cat >"$tmp/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:$api_port", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: "$token"}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
EOF
export KUBECONFIG=$tmp/kubeconfig
for _ in $(seq 120); do kubectl get --raw /readyz >/dev/null 2>&1 && break; sleep 0.5; done
kubectl get --raw /readyz >/dev/null
kubectl apply -f "$root/charts/csi-thin/files/crds/" >/dev/null
# shellcheck source=../test/cluster/env.sh
source "$root/test/cluster/env.sh" # wait_established
wait_established 60 $(kubectl get crd -o jsonpath='{.items[*].metadata.name}')
node=rss-node
kubectl create -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata: {name: $node}
EOF

mkdir -p "$tmp/pool" "$tmp/kubelet/plugins_registry"
"$bin" --mode=node --node-id="$node" --kubeconfig="$tmp/kubeconfig" --endpoint="unix://$tmp/csi.sock" \
	--kubelet-dir="$tmp/kubelet" --health-address="127.0.0.1:$health_port" --metrics-address="127.0.0.1:$metrics_port" \
	--backend=btrfs --pool-path="$tmp/pool" --loop-file="$tmp/pool.img" --loop-size=2Gi \
	>"$tmp/node.log" 2>&1 &
pid=$!
pids+=("$pid")

status() {
	printf '%-6s %s\n' "$1" "$(grep -E '^(VmHWM|VmRSS|RssAnon|RssFile):' "/proc/$pid/status" | tr -s ' \t' ' ' | paste -sd, -)"
}
for _ in $(seq 120); do
	[[ $(kubectl get thinnode "$node" -o jsonpath='{.status.healthy}' 2>/dev/null) == true ]] && break
	kill -0 "$pid" 2>/dev/null || { cat "$tmp/node.log" >&2; exit 1; }
	sleep 0.5
done
[[ $(kubectl get thinnode "$node" -o jsonpath='{.status.healthy}') == true ]]
sleep 3
status idle

# The work: the controller (this binary, --mode=controller) creates the
# resources from CSI calls, the node agent carries them out, and the node
# service stages and publishes volumes (hack/rssprobe/csiload).
"$bin" --mode=controller --kubeconfig="$tmp/kubeconfig" --endpoint="unix://$tmp/controller.sock" \
	--health-address= --metrics-address= >"$tmp/controller.log" 2>&1 &
pids+=($!)
(cd "$root" && go build -o "$tmp/csiload" ./hack/rssprobe/csiload)
if ! "$tmp/csiload" -controller "unix://$tmp/controller.sock" -node "unix://$tmp/csi.sock" \
	-dir "$tmp/mnt" -rounds "$N" -parallel 4; then
	tail -20 "$tmp/controller.log" "$tmp/node.log" >&2
	exit 1
fi
for _ in 1 2 3; do
	curl -fsS "http://127.0.0.1:$metrics_port/metrics" >/dev/null
	curl -fsS "http://127.0.0.1:$health_port/readyz" >/dev/null
done
sleep 3
status peak
# The Go runtime's own view of the anonymous part.
metrics=$(curl -fsS "http://127.0.0.1:$metrics_port/metrics")
grep -E '^go_memstats_(heap_inuse|heap_idle|heap_released|stack_inuse|sys|next_gc|mspan_inuse|gc_sys|other_sys)_bytes ' <<<"$metrics" |
	awk '{printf "  %-40s %6.1f MiB\n", $1, $2/1048576}'
# What the GC costs: collections so far, their pauses, the process's CPU time.
grep -E '^(go_gc_duration_seconds_(count|sum)|process_cpu_seconds_total) ' <<<"$metrics" | awk '{printf "  %-40s %g\n", $1, $2}'
kill -0 "$pid"
# What the resident set is made of: each mapping's Rss (KiB), largest first.
awk '/^[0-9a-f]+-[0-9a-f]+ /{name=$6; if (name=="") name="[anon]"; perm=$2}
	/^Rss:/{rss[name" "perm]+=$2}
	END{for (k in rss) if (rss[k]>=256) printf "  %6d KiB  %s\n", rss[k], k}' "/proc/$pid/smaps" | sort -rn
# HOOK runs with the live process's pid, e.g. to look at its pagemap.
if [[ -n ${HOOK:-} ]]; then $HOOK "$pid" "$bin"; fi
