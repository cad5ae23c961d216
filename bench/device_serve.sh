#!/usr/bin/env bash
# The multi-core serving bar on a bigger host, from a plain Python with onnxruntime/numpy (no TensorFlow):
# installs kerasport and the serving wheels from WHEELS into a venv that sees the system's packages, then runs
# bench/serve.py's sweep + workers sections with the server (and the in-process sweep) on the first half of the
# cores and the load generator on the other half, and `kerasport bench` on the bundle (all cores).
#
#   bench/device_serve.sh BUNDLE WHEELS OUT_DIR [SECONDS] [serve-only | bench-only]
set -euo pipefail
bundle=$1 wheels=$2 out=$3 seconds=${4:-2} only=${5:-}
mkdir -p "$out"
cores=$(nproc)
half=$((cores / 2))
# Server and load generator on different *physical* cores: where hyper-threads are enumerated as 0..n-1 then
# their siblings, cores 0-7 and 8-15 would share physical cores. Split by each CPU's sibling set instead.
read -r server_cpus load_cpus < <(python3 - <<'CPUS'
from pathlib import Path
groups = sorted({Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip()
                 for cpu in sorted(__import__("os").sched_getaffinity(0))}, key=lambda g: int(g.replace("-", ",").split(",")[0]))
half = len(groups) // 2
print(",".join(groups[:half]), ",".join(groups[half:]))
CPUS
)
echo "physical-core split: server and in-process on CPUs $server_cpus, load generator on $load_cpus"
lscpu | grep -E "Model name|Thread|Core\(s\)|Socket|NUMA node" || true
venv=$(mktemp -d)/venv
python3 -m venv --system-site-packages --without-pip "$venv"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The host's python3 may itself be a venv (whose packages a nested venv does not see): list its package folders.
python3 -c 'import sys; print("\n".join(p for p in sys.path if p.endswith(("site-packages", "dist-packages"))))' \
  > "$site/host_packages.pth"
# Wheels are zip files: unpacked into the venv's site-packages, no pip or index needed on the host.
"$venv/bin/python" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
  "$site" "$wheels"/*.whl
printf '#!%s\nfrom kerasport.app.cli import main\nif __name__ == "__main__":\n    main()\n' "$venv/bin/python" > "$venv/bin/kerasport"
chmod +x "$venv/bin/kerasport"
"$venv/bin/python" - <<'PY' | tee "$out/host.json"
import json
from kerasport.perf import host_info
print(json.dumps(host_info()))
PY
work=$(mktemp -d)/bundle
cp -r "$bundle" "$work"
[ "$only" = serve-only ] || "$venv/bin/kerasport" bench --run "$work" --seconds 60 --json > "$out/kerasport_bench.json" 2> "$out/kerasport_bench.log" \
  || echo "kerasport bench failed: $(tail -2 "$out/kerasport_bench.log")"
[ "$only" = serve-only ] || tail -8 "$out/kerasport_bench.log"
[ "$only" = serve-only ] || "$venv/bin/python" bench/perf_check.py --run "$work" --json "$out/perf_check.json" || echo "perf_check: exit $?"
[ "$only" = bench-only ] && exit 0
taskset -c "$server_cpus" "$venv/bin/python" bench/serve.py --run "$work" --sections sweep,workers \
  --scale-variants onnx-fp32,onnx-int8 --seconds "$seconds" --worker-counts "${WORKER_COUNTS:-$((half / 2)),$half}" \
  --load-cpus "$load_cpus" --load-processes "$half" --json "$out/serve.json" 2>&1 | tee "$out/serve.log" | grep -v '^INFO'
