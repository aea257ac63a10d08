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
set -uo pipefail
cd "$(dirname "$0")/.."
bin=bin table=bin/test-stages.tsv
mkdir -p "$bin"
: >"$table"
start=$SECONDS

say() { printf '[%s] %s\n' "$(date +%T)" "$*"; }

run_lane() {
	local lane=$1 s rc failed=
	shift
	for stage in $lane; do
		if [[ -n $failed ]]; then
			printf '%s\t%s\t%s\t%s\n' "$stage" "$n" - "not run" >>"$table"
			continue
		fi
		say "lane $n: $stage"
		s=$SECONDS
		make --no-print-directory "$stage" >"$bin/stage-$stage.log" 2>&1
		rc=$?
		if ((rc == 0)); then
			printf '%s\t%s\t%s\t%s\n' "$stage" "$n" $((SECONDS - s)) ok >>"$table"
			say "lane $n: $stage ok in $((SECONDS - s)) s"
		else
			printf '%s\t%s\t%s\t%s\n' "$stage" "$n" $((SECONDS - s)) "FAIL ($rc)" >>"$table"
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

echo
printf '%-24s %4s %8s  %s\n' stage lane seconds status
sort -t$'\t' -k2,2n -s "$table" | while IFS=$'\t' read -r stage lane secs st; do
	printf '%-24s %4s %8s  %s\n' "$stage" "$lane" "$secs" "$st"
done
printf '%-24s %4s %8s  %s\n' "total (wall clock)" "" $((SECONDS - start)) "$( ((status)) && echo FAIL || echo ok)"
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
while IFS=$'\t' read -r stage lane secs st; do
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
