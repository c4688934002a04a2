#!/usr/bin/env bash
# One device call: `make gpu-check`'s three families in sequence, each in a process of its own
# under its own time limit (an out-of-memory crash or a hang costs that family only), each
# writing its rows to $OUT as they finish; then the Markdown tables of every row.
#
#   OUT=/some/folder scripts/gpu-check-all.sh        (device: bash scripts/gpu-check-all.sh)
#
# Limits (seconds, family:limit ...) fit one 10-minute command on an H100-class GPU; override
# with GPU_CHECK_LIMITS. Each family stops starting parts 20 s before its limit (--budget), and
# `timeout` ends it at the limit. Python: $PY, else python3 (the one with the CUDA torch).
# Exit status: 0 when every row is ok, 1 otherwise (2: no CUDA, said in one sentence).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-check}
PY=${PY:-python3}
LIMITS=${GPU_CHECK_LIMITS:-llava:150 llava_next:210 qwen2_5_vl:180}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
status=0
for entry in $LIMITS; do
  family=${entry%%:*} limit=${entry#*:}
  timeout -k 10 "$limit" "$PY" -m tests.gpu_check --family "$family" --out "$OUT" \
    --budget $((limit - 20)) "$@" 2>&1 | tee "$OUT/$family.log"
  rc=${PIPESTATUS[0]}
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    printf '{"family": "%s", "backend": "-", "part": "all", "kind": "failure", "status": "error", "detail": "stopped by its %s s limit (timeout exit %s)"}\n' \
      "$family" "$limit" "$rc" >>"$OUT/$family.jsonl"
    echo "[$family] stopped by its $limit s limit; the rows above are kept in $OUT/$family.jsonl"
  fi
  [ "$rc" = 2 ] && exit 2
  [ "$rc" = 0 ] || status=1
done
"$PY" -m tests.gpu_check --table "$OUT" | tee "$OUT/tables.md"
exit $status
