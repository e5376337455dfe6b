#!/usr/bin/env bash
# Copy what a device call brought back into the repository (docs/gpu-check.md):
#     bash bench/gpu/keep_results.sh <files_at> [DEST]      # DEST: docs/gpu
# gpu.json is required (the check writes it before its first section, so it exists unless the check never
# started); gpu.png, torch_compile.json, log.txt and machine.txt are copied where present, a missing one is named
# and never stops the copy. Prints the device the JSON names; the commit is the caller's.
set -u
src="${1:?usage: keep_results.sh <files_at> [DEST]}/gpu"
dest="${2:-docs/gpu}"
if [ ! -f "$src/gpu.json" ]; then
    echo "no $src/gpu.json: the check did not start (see $src/log.txt if present)" >&2
    exit 1
fi
mkdir -p "$dest"
for f in gpu.json gpu.png torch_compile.json log.txt machine.txt; do
    if [ -f "$src/$f" ]; then cp "$src/$f" "$dest/$f"; else echo "missing (not copied): $f"; fi
done
"${PYTHON:-python3}" -c 'import json, sys; r = json.load(open(sys.argv[1])); g = r["result"].get("gpu", {})
print("partial" if r.get("partial") else "complete", "|", r["result"].get("device_name"), "|", g.get("compute_mode"))' "$dest/gpu.json"
ls -l "$dest"
