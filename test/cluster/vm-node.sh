#!/usr/bin/env bash
# vm-node.sh — runs inside a test VM (test/vm/run.sh --tap --workdir) and
# makes it a node of the test cluster: its kernel has dm-thin, which this
# host's lacks, so the LVM thin backend runs in the cluster there.
# up.sh starts it (VM_NODES) and writes everything it needs into the VM's
# work dir, /tmp here: node.env (NAME, IP, SERVICE_CIDR, ROUTES as
# CIDR@GATEWAY words, NODE_DIRS, LABELS, K8S_BIN), containerd.toml, kubelet.yaml,
# kube-proxy.yaml, their kubeconfigs, ca.crt, resolv.conf and images.tar
# (pause, busybox, agnhost). The host's root is this VM's root, read-only,
# so the binaries are the host's; what a node writes goes to tmpfs.
#
# Logs go to /tmp/logs (the host reads them in the work dir). Images to
# import later are dropped in /tmp/import as NAME.tar; this script imports
# each and answers with NAME.done (or NAME.failed). /tmp/lvs.request is
# answered with LVM's list of logical volumes in /tmp/lvs.out,
# /tmp/kill-agent.request by SIGKILL to the node's csi-thin agent and the
# PIDs killed in /tmp/kill-agent.out, /tmp/kill-node.request by SIGKILL to
# the kubelet and then the agent (the node lost, its containers and
# mounts left as they were; the PIDs in /tmp/kill-node.out) and
# /tmp/start-kubelet.request by starting the kubelet again (its PID in
# /tmp/start-kubelet.out). It runs until
# /tmp/stop appears (down.sh), then stops its daemons and the VM powers
# off.
set -euo pipefail
w=/tmp
# shellcheck source=/dev/null
source "$w/node.env"
export PATH=$K8S_BIN:$PATH
mkdir -p "$w/logs" "$w/import"
log() { printf '[%s] vm-node %s: %s\n' "$(date +%T)" "$NAME" "$*" | tee -a "$w/logs/vm-node.log"; }

ip link set eth0 up
ip addr add "$IP/24" dev eth0
ip route add "$SERVICE_CIDR" dev eth0 src "$IP"
for r in $ROUTES; do ip route add "${r%@*}" via "${r#*@}"; done
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.bridge.bridge-nf-call-iptables=1

mount -t cgroup2 cgroup2 /sys/fs/cgroup
# What the node writes (images, pods' volumes, logs, CNI and the CSI
# driver's state) on tmpfs over the read-only root; shared, for the CSI
# driver's Bidirectional mounts.
mount --make-rshared /
for d in /var/lib/kubelet /var/lib/containerd /var/log/pods /var/log/containers /var/lib/cni /dev/shm $NODE_DIRS; do
	mkdir -p "$d" 2>/dev/null || true # /dev/shm: devtmpfs is writable
	mount -t tmpfs -o mode=0755 tmpfs "$d"
done
mkdir -p /run/containerd /run/lock/lvm

# daemon NAME CMD...: CMD in the background, logging to /tmp/logs/NAME.log.
pids=()
daemon() {
	local name=$1
	shift
	"$@" </dev/null >"$w/logs/$name.log" 2>&1 &
	pids+=("$name:$!")
	log "started $name (PID $!)"
}
# A node whose daemon died is broken: end the VM (up.sh reports it).
check_daemons() {
	local p
	for p in "${pids[@]}"; do
		kill -0 "${p#*:}" 2>/dev/null && continue
		log "FAIL: ${p%%:*} exited; the end of its log:"
		tail -20 "$w/logs/${p%%:*}.log"
		exit 1
	done
}
# until_ok SECONDS WHAT CMD...: poll CMD.
until_ok() {
	local secs=$1 what=$2 end
	shift 2
	end=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		((SECONDS < end)) || { log "FAIL: no $what after $secs s"; exit 1; }
		sleep 1
	done
}

daemon containerd containerd --config "$w/containerd.toml"
until_ok 120 containerd ctr version
ctr -n k8s.io images import "$w/images.tar" >>"$w/logs/vm-node.log" 2>&1
log "images: $(ctr -n k8s.io images ls -q | tr '\n' ' ')"
daemon kube-proxy kube-proxy --config "$w/kube-proxy.yaml"
start_kubelet() {
	daemon kubelet kubelet --config "$w/kubelet.yaml" --kubeconfig "$w/kubelet.kubeconfig" \
		--hostname-override "$NAME" --node-ip "$IP" --root-dir /var/lib/kubelet --v=2 --node-labels "$LABELS"
}
start_kubelet
log "up"
echo up >"$w/up"

# The loop waits with bash's read on a FIFO no one writes to, not with
# sleep(1): under emulation a fork and exec costs the VM ~0.2 s of CPU,
# and this loop runs for the node's whole life. (On tmpfs: the VM has no
# /dev/fd for a process substitution, and /tmp is 9p.)
# answer WHAT TEXT: the answer to WHAT.request, whole or not at all.
answer() {
	echo "$2" >"$w/$1.part"
	mv "$w/$1.part" "$w/$1.out"
}
# kill_agent SIGKILLs the node's csi-thin agent; agents: the PIDs, or none.
kill_agent() {
	local a
	agents=$(pgrep -f -- 'csi-thin.*--mode=node' || true)
	for a in $agents; do kill -KILL "$a" || true; done
	agents=${agents:-none}
}

mkfifo /run/vm-node.tick
exec {tick}<>/run/vm-node.tick
while :; do
	# down.sh asks for a stop: the daemons end (and close their connections)
	# while the control plane still runs, then the VM powers off.
	if [[ -e $w/stop ]]; then
		log "stopping"
		for p in "${pids[@]}"; do kill -TERM "${p#*:}" 2>/dev/null || true; done
		wait
		exit 0
	fi
	check_daemons
	# The host asks what LVM holds in this VM (test/e2e TestLVMNodes): an
	# answer from the VM itself, not from the driver under test.
	if [[ -e $w/lvs.request ]]; then
		rm -f "$w/lvs.request"
		lvm lvs --noheadings -o vg_name,lv_name >"$w/lvs.part" 2>&1 || echo "lvs failed: $?" >>"$w/lvs.part"
		mv "$w/lvs.part" "$w/lvs.out"
	fi
	# The host has this node's csi-thin agent killed (TestLVMNodes: a copy
	# whose receiving agent crashes); the answer lists the PIDs killed.
	if [[ -e $w/kill-agent.request ]]; then
		rm -f "$w/kill-agent.request"
		kill_agent
		answer kill-agent "$agents"
		log "killed the csi-thin agent: $agents"
	fi
	# The host has the node lost (TestLVMNodes/LostNodeReleasesItsClaims):
	# the kubelet first, so that nothing restarts the agent, then the
	# agent. The kubelet leaves the daemons that must be running.
	if [[ -e $w/kill-node.request ]]; then
		rm -f "$w/kill-node.request"
		kept=() killed=()
		for p in "${pids[@]}"; do
			if [[ ${p%%:*} == kubelet ]]; then
				kill -KILL "${p#*:}" 2>/dev/null || true
				wait "${p#*:}" 2>/dev/null || true
				killed+=("${p#*:}")
			else
				kept+=("$p")
			fi
		done
		pids=("${kept[@]}")
		kill_agent
		answer kill-node "kubelet ${killed[*]:-none} agent $agents"
		log "node lost: killed the kubelet (${killed[*]:-none}) and the csi-thin agent ($agents)"
	fi
	if [[ -e $w/start-kubelet.request ]]; then
		rm -f "$w/start-kubelet.request"
		start_kubelet
		answer start-kubelet "${pids[-1]#*:}"
	fi
	for f in "$w"/import/*.tar; do
		[[ -e $f ]] || continue
		if ctr -n k8s.io images import "$f" >>"$w/logs/vm-node.log" 2>&1; then
			log "imported $(basename "$f")"
			mv "$f" "${f%.tar}.done"
		else
			log "FAIL: import of $(basename "$f")"
			mv "$f" "${f%.tar}.failed"
		fi
	done
	read -r -t 1 -u "$tick" _ || true
done
