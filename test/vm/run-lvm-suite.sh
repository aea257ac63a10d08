#!/usr/bin/env bash
# The LVM thin integration suite (test/lvm) on a real dm-thin pool: builds
# the test binary, and runs it natively when this kernel has dm-thin, else
# inside the VM of test/vm/run.sh. Exits with the tests' status.
#
#   test/vm/run-lvm-suite.sh [go test binary flags, e.g. -test.run TestLifecycle]
#
# CSI_THIN_LVM_NATIVE=0 forces the VM even where dm-thin is available.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
start=$(date +%s)
bin=$(mktemp -d /var/tmp/csi-thin-lvm-suite.XXXXXX)
log=$bin/out.log
trap 'rm -rf "$bin"' EXIT

echo "run-lvm-suite: building the test binary"
(cd "$repo" && CGO_ENABLED=0 GOFLAGS=-mod=mod go test -c -o "$bin/lvm.test" ./test/lvm/)

native=0
if [ "${CSI_THIN_LVM_NATIVE:-1}" != 0 ] && [ "$(id -u)" = 0 ] && command -v dmsetup >/dev/null; then
  modprobe dm-thin-pool 2>/dev/null || true
  dmsetup targets 2>/dev/null | grep -q '^thin-pool' && native=1
fi

set +e
if [ $native = 1 ]; then
  echo "run-lvm-suite: this kernel has dm-thin: running natively"
  (cd "$bin" && ./lvm.test -test.v -test.timeout 45m -test.parallel 4 "$@") 2>&1 | tee "$log"
else
  echo "run-lvm-suite: no dm-thin in this kernel: running in the test VM"
  "$repo/test/vm/run.sh" --timeout 3000 "$bin/lvm.test" -test.v -test.timeout 45m -test.parallel 4 "$@" 2>&1 | tee "$log"
fi
status=${PIPESTATUS[0]}
set -e
passed=$(grep -c '^--- PASS' "$log" || true)
failed=$(grep -c '^--- FAIL' "$log" || true)
skipped=$(grep -c '^--- SKIP' "$log" || true)
echo "run-lvm-suite: finished in $(( $(date +%s) - start ))s with status $status"
echo "lvm-suite: $passed passed, $failed failed, $skipped skipped"
exit "$status"
