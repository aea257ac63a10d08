#!/usr/bin/env bash
# test-stages.sh — runs make targets (stages) in lanes: the stages of one
# lane one after another, the lanes side by side. make test puts in one
# lane the suites that share a resource (the host's btrfs and loop devices,
# the VM) and gives the cluster build a lane of its own, so that a cold
# machine builds Kubernetes while the other suites run.
#
#   hack/test-stages.sh 'STAGE STAGE...' ['STAGE...']...
#
# Each stage's output goes to bin/stage-STAGE.log; a failed stage ends its
# lane (the other lanes run on) and its log's tail is printed. At the end:
# a table of stage, lane, seconds and status (also in bin/test-stages.tsv),
# and the exit status is 1 if any stage failed or did not run; after the
# table, the failing tests of each failed stage.
# TEST_SERIAL=1 runs the lanes one after another (a machine too busy for
# the VM's timeouts when it shares the cores).
# Each stage runs in a cgroup of its own, so the table also gives the CPU
# time its processes used (cgroup v1's cpuacct): the
# processes a stage starts, its VMs and its cluster's control plane and
# kubelet included, but not the pods' containers (the kubelet puts them
# in cgroups of its own). On a machine whose cores are all busy, the
# wall-clock time of a stage says little about its cost; its CPU time
# does. Without a writable cgroup hierarchy the CPU column is "-".
set -uo pipefail
cd "$(dirname "$0")/.."
# TEST_STAGES_BIN: where the logs and the table go (default bin).
bin=${TEST_STAGES_BIN:-bin} table=${TEST_STAGES_BIN:-bin}/test-stages.tsv
mkdir -p "$bin"
: >"$table"
start=$SECONDS

say() { printf '[%s] %s\n' "$(date +%T)" "$*"; }

# cgroups: where each stage's cgroup is made (empty: no CPU accounting).
# Only cgroup v1's cpuacct hierarchy: a process moved there stays where it
# was in every other hierarchy (memory, cpu, ...), so the kubelet and the
# VMs a stage starts see no difference. On cgroup v2 a move would change
# every controller at once; there the column is "-".
cgroups=
if [[ -f /sys/fs/cgroup/cpuacct/cpuacct.usage ]] && mkdir -p "/sys/fs/cgroup/cpuacct/csi-thin-test-$$" 2>/dev/null; then
	cgroups=/sys/fs/cgroup/cpuacct/csi-thin-test-$$
fi

# cpu_seconds CGROUP: the CPU time its processes used, in seconds.
cpu_seconds() {
	local ns
	if read -r ns 2>/dev/null <"$1/cpuacct.usage"; then
		echo $((ns / 1000000000))
	else
		echo -
	fi
}

# run_stage LANE STAGE: make STAGE, in a cgroup of its own when there are
# cgroups; prints the stage's CPU seconds on fd 3 (closed for make: a
# process the stage leaves behind must not hold the caller's pipe open).
run_stage() {
	local cg=${cgroups:+$cgroups/$1-$2} rc
	if [[ -n $cg ]] && mkdir -p "$cg" 2>/dev/null; then
		(echo "$BASHPID" >"$cg/cgroup.procs" 2>/dev/null; exec make --no-print-directory "$2") >"$bin/stage-$2.log" 2>&1 3>&-
		rc=$?
		cpu_seconds "$cg" >&3
		# Empty once the stage's processes are gone; one left behind
		# (a leaked daemon) keeps it, which is harmless.
		rmdir "$cg" 2>/dev/null
	else
		make --no-print-directory "$2" >"$bin/stage-$2.log" 2>&1 3>&-
		rc=$?
		echo - >&3
	fi
	return $rc
}

run_lane() {
	local lane=$1 s rc failed=
	shift
	for stage in $lane; do
		if [[ -n $failed ]]; then
			printf '%s\t%s\t%s\t%s\t%s\n' "$stage" "$n" - "not run" - >>"$table"
			continue
		fi
		say "lane $n: $stage"
		s=$SECONDS
		cpu=$(run_stage "$n" "$stage" 3>&1 >/dev/null)
		rc=$?
		if ((rc == 0)); then
			printf '%s\t%s\t%s\t%s\t%s\n' "$stage" "$n" $((SECONDS - s)) ok "$cpu" >>"$table"
			say "lane $n: $stage ok in $((SECONDS - s)) s"
		else
			printf '%s\t%s\t%s\t%s\t%s\n' "$stage" "$n" $((SECONDS - s)) "FAIL ($rc)" "$cpu" >>"$table"
			say "lane $n: $stage FAILED (exit $rc) in $((SECONDS - s)) s; the end of $bin/stage-$stage.log:"
			tail -40 "$bin/stage-$stage.log" | sed "s/^/    $stage: /"
			failed=1
		fi
	done
	[[ -z $failed ]]
}

pids=() n=0
for lane in "$@"; do
	n=$((n + 1))
	if [[ ${TEST_SERIAL:-0} == 1 ]]; then
		run_lane "$lane" || failed_lane=1
	else
		run_lane "$lane" &
		pids+=($!)
	fi
done
status=${failed_lane:-0}
for p in ${pids[@]+"${pids[@]}"}; do wait "$p" || status=1; done

[[ -n $cgroups ]] && rmdir "$cgroups" 2>/dev/null

echo
printf '%-24s %4s %8s %8s  %s\n' stage lane seconds cpu-s status
sort -t$'\t' -k2,2n -s "$table" | while IFS=$'\t' read -r stage lane secs st cpu; do
	printf '%-24s %4s %8s %8s  %s\n' "$stage" "$lane" "$secs" "$cpu" "$st"
done
wall=$((SECONDS - start))
cpu_total=$(awk -F'\t' '$5 ~ /^[0-9]+$/ { t += $5 } END { print t + 0 }' "$table")
printf '%-24s %4s %8s %8s  %s\n' "total (wall clock)" "" $wall "$cpu_total" "$( ((status)) && echo FAIL || echo ok)"
((wall > 0)) && echo "the stages used $cpu_total CPU seconds in $wall s on $(nproc) cores: $((100 * cpu_total / (wall * $(nproc))))% of the machine"
echo "logs: $bin/stage-*.log"
# failed_messages prints what the failing tests of a `go test -v` log said
# (file.go:line: ... lines): go test -v marks whose output follows with
# "=== RUN/NAME/CONT <test>" and "--- FAIL: <test>" lines.
failed_messages() {
	awk '
		FNR == NR { if ($1 == "---" && $2 == "FAIL:") failed[$3] = 1; next }
		$1 == "===" { current = $3; next }
		$1 == "---" { current = $3; next }
		/^ +[A-Za-z0-9_]+\.go:[0-9]+: / && (current in failed) { print current ": " $0 }
	' "$1" "$1" | sed 's/:  */: /'
}

# Last, where a CI page that shows only the end of the output still has
# it: why each failed stage failed (its failing tests with the lines
# before them, else the end of its log).
while IFS=$'\t' read -r stage lane secs st _; do
	[[ $st == FAIL* ]] || continue
	log=$bin/stage-$stage.log
	# A stage that filters its output keeps the whole go test log as
	# bin/<stage>.log: the failure messages are there, unless what failed
	# came after the tests (test-reliability's fuzzing, for one).
	grep -qs -- '--- FAIL' "$bin/$stage.log" && log=$bin/$stage.log
	echo "why $stage failed ($log):"
	if grep -q -- '--- FAIL' "$log"; then
		grep -- '--- FAIL' "$log" | head -8
		failed_messages "$log" | tail -14
	else
		tail -12 "$log"
	fi | cut -c1-300 | sed 's/^/    /'
done <"$table"
exit $status
