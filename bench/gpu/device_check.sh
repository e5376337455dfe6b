#!/usr/bin/env bash
# The GPU check as the device machine runs it (docs/gpu-check.md): from the repository root,
#     bash bench/gpu/device_check.sh [--quick]          # on the lent GPU ($OUT: the folder that comes back)
#     OUT=/tmp/x bash bench/gpu/device_check.sh --dry-run   # the same command on a CPU (tests/joyvasa/test_gpu_bench.py;
#                                                         # PYTHON: the interpreter, default python3)
# Writes $OUT/gpu/: machine.txt (nvidia-smi), log.txt, and what the check writes as it goes (gpu.json after every
# section, gpu.png, torch_compile.json). Nothing optional stops it: a missing nvidia-smi is noted, the check runs
# under a hard guard a little past its own budget (360 s full, 170 s --quick) so the device call (450 s / 240 s)
# always returns its files; the exit status is the check's.
set -u
out="${OUT:?set OUT to the folder whose files come back}/gpu"
mkdir -p "$out"
guard=420
case " $* " in *" --quick "*) guard=210 ;; esac
case " $* " in *" --dry-run "*) guard=1500 ;; esac
{ nvidia-smi --query-gpu=name,memory.total,driver_version,compute_mode,mig.mode.current --format=csv \
    || echo "nvidia-smi: not available here"; } > "$out/machine.txt" 2>&1
cat "$out/machine.txt"
PYTHONUNBUFFERED=1 timeout --kill-after=10 "$guard" "${PYTHON:-python3}" avatarstream/cli/tree_runner.py bench --suite gpu \
    --out "$out" "$@" > "$out/log.txt" 2>&1
rc=$?
[ "$rc" = 124 ] && echo "the check passed its ${guard} s guard and was stopped: gpu.json holds the sections before"
grep -v '^ ' "$out/log.txt" | grep -v '^[]}{]' | tail -n 80
echo "check exit status $rc; files:"
ls -l "$out"
exit "$rc"
