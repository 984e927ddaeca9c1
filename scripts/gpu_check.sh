#!/usr/bin/env bash
# Measure every GPU preset at full size with random weights (no download): peak memory per phase under the preset's
# own memory cap, seconds per step and its split, sampling speed. One process per preset, each with a time limit,
# so one failure costs only its own row. Writes one JSON file (default gpu_check.json):
#   {"gpu": ..., "date": ..., "torch": ..., "wall_seconds": ..., "presets": [<bench --gpu --json result or {"preset", "error"}>]}
#
#   scripts/gpu_check.sh [OUT.json]              # on the GPU: about 6-8 minutes on one H100 / H200
#   scripts/gpu_check.sh --dry-run [OUT.json]    # the same commands on the tiny fixtures, on the CPU (a minute)
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
out=${1:-gpu_check.json}
rows=$(mktemp -d)
fixtures=$(mktemp -d)
trap 'rm -rf "$rows" "$fixtures"' EXIT
start=$(date +%s)

if [ "$dry" = 1 ]; then
  python -m srpo_core fixtures --out "$fixtures" >/dev/null 2>&1
  # preset, memory cap (GB), per-preset time limit (s)
  plan="$fixtures/presets/flux-hpsv2.1.yaml 24 120
$fixtures/presets/flux-pickscore.yaml 80 120
$fixtures/presets/sd3-hpsv2.1.yaml 16 120"
  extra=(--set device=cpu --set free_text_encoders=true)
else
  plan="flux-dev-24gb 24 150
flux-dev-80gb 80 150
sd35-medium-16gb 16 120
flux-dev-pickscore 80 120"
  extra=()
fi

i=0
while read -r preset cap limit; do
  i=$((i + 1))
  echo "[$i] $preset (cap ${cap} GB, limit ${limit} s)" >&2
  timeout "$limit" python -m srpo_core bench --gpu --random-weights --preset "$preset" --memory-cap-gb "$cap" \
    --steps 2 "${extra[@]}" --json >"$rows/$i.out" 2>"$rows/$i.err"
  echo "$? $preset" >"$rows/$i.rc"
done <<<"$plan"

python - "$rows" "$out" "$(( $(date +%s) - start ))" <<'PY'
import json, sys, time
from pathlib import Path
import torch
rows, out, wall = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
presets = []
for rc_file in sorted(rows.glob("*.rc"), key=lambda p: int(p.stem)):
    rc, preset = rc_file.read_text().split(" ", 1)
    stdout = rows.joinpath(f"{rc_file.stem}.out").read_text().strip().splitlines()
    stderr = rows.joinpath(f"{rc_file.stem}.err").read_text().strip().splitlines()
    if rc == "0" and stdout:
        presets.append(json.loads(stdout[-1]))
    else:
        why = "timed out" if rc == "124" else (stderr[-1] if stderr else f"exit {rc}")
        presets.append({"preset": preset.strip(), "error": why})
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (dry run)"
out.write_text(json.dumps({"gpu": gpu, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                           "wall_seconds": wall, "presets": presets}, indent=1) + "\n")
failed = [p["preset"] for p in presets if "error" in p]
print(f"{out}: {len(presets) - len(failed)} of {len(presets)} presets measured in {wall} s"
      + (f"; failed: {', '.join(failed)}" if failed else ""))
PY
