#!/bin/bash
# Runs inside the test VM as test/vm/run.sh's program, with csi-thin-bench
# staged beside it: the LVM thin benchmark, then the LVM thin volume
# stream, in one boot (a boot costs about a minute under emulation).
#
#   vm-lvm.sh [stream flags...] -- [run flags...]
#
# Exits non-zero if either failed; the run's results are complete if its
# end marker is in the console log.
stream=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do stream+=("$1"); shift; done
[ $# -gt 0 ] && shift
/tmp/csi-thin-bench run --backend lvmthin "$@"
run_status=$?
echo "=== csi-thin-bench stream ==="
/tmp/csi-thin-bench stream --backend lvmthin --work-dir "${TMPDIR:-/run/tmp}" "${stream[@]}"
stream_status=$?
echo "vm-lvm: run status $run_status, stream status $stream_status"
[ $run_status = 0 ] && [ $stream_status = 0 ]
