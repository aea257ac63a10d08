#!/usr/bin/env bash
# fuzz.sh — runs every Fuzz* function of every *_fuzz_test.go file for
# FUZZTIME each (make fuzz). A new crasher lands in its package's
# testdata/fuzz, fails the run and is printed (a CI clone is thrown away).
#
# Go's fuzzing engine has two known failures that are not findings
# (golang/go#51484: "context deadline exceeded" when -fuzztime runs out
# while a worker is mid-input; golang/go#56238: a worker on a starved
# machine taking over 10 s for one input is killed as "hung" and its
# input written as a crasher). So a failure counts when the engine wrote
# an input that fails again when run on its own (go test -run, with a
# timeout); a failure without an input counts unless it is exactly the
# deadline message. What is tolerated is said in bin/fuzz.log.
set -uo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-10s} go=${GO:-go} bin=bin
mkdir -p "$bin"
: >"$bin/fuzz.log"

# Each run fuzzes from the seeds and testdata only: the inputs the engine
# keeps in GOCACHE would otherwise pile up run after run on a CI machine
# until replaying them takes all of FUZZTIME. A worker killed at the
# deadline leaves its f.TempDir() behind, so the targets get a temporary
# directory of their own that goes with the run.
rm -rf "$("$go" env GOCACHE)/fuzz/$("$go" list -m)"
TMPDIR=$(mktemp -d -t csi-thin-fuzz.XXXXXX)
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT

note() { echo "$*" | tee -a "$bin/fuzz.log"; }

# fuzz_one TARGET PKGDIR: 0 when the target found nothing.
fuzz_one() {
	local t=$1 dir=$2 log=$bin/fuzz-$1.log rc input
	"$go" test -run '^$' -fuzz "^$t\$" -fuzztime "$fuzztime" "./$dir" >"$log" 2>&1
	rc=$?
	# Before fuzzing, the engine replays the corpus (seeds, testdata and
	# what earlier runs found, kept in GOCACHE) for baseline coverage; on a
	# busy machine with a grown corpus that can take all of FUZZTIME.
	if grep -q 'execs: [0-9]' "$log"; then
		note "fuzz $t: $(grep -o 'execs: [0-9]*' "$log" | tail -1) in $fuzztime, exit $rc"
	else
		note "fuzz $t: corpus replay only ($(grep -o 'baseline coverage: [0-9/]*' "$log" | tail -1)), no new input in $fuzztime, exit $rc"
	fi
	((rc == 0)) && return 0
	input=$(sed -n 's/.*Failing input written to //p' "$log" | tail -1)
	if [[ -z $input ]]; then
		if grep -q -- '--- FAIL' "$log" && grep -qx '[[:space:]]*context deadline exceeded' "$log"; then
			note "fuzz $t: tolerated, the engine's -fuzztime deadline (golang/go#51484), no input failed"
			return 0
		fi
		tail -20 "$log"
		return 1
	fi
	if "$go" test -count=1 -timeout 120s -run "^$t\$/^${input##*/}\$" "./$dir" >"$log.rerun" 2>&1; then
		note "fuzz $t: tolerated, $dir/$input passes on its own: $(grep -m1 -o 'fuzzing process hung[^:]*' "$log" || echo 'the engine failed')"
		rm -f "$dir/$input"
		return 0
	fi
	tail -20 "$log"
	echo "the failing input, $dir/$input:"
	cat "$dir/$input"
	tail -20 "$log.rerun"
	return 1
}

for f in $(git ls-files '*_fuzz_test.go'); do
	for t in $(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$f"); do
		fuzz_one "$t" "$(dirname "$f")" || exit 1
	done
done
