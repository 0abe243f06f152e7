#!/usr/bin/env bash
# `kfac-mem audit` on the demo model: the unedited model, the K-FAC edit and SVD truncation at the
# settings docs/comparison.md matched to 1.2x perplexity (layers 1-3 gate+up+down; K-FAC rho 0.825,
# SVD drop 75%). Needs a `kfac-mem demo` run (its eigen/, mined/ and sets/).
#
#   bash scripts/audit_demo.sh [DEMO_OUT] [AUDIT_OUT] [extra audit flags...]
set -euo pipefail
DEMO=${1:-runs/demo}
OUT=${2:-runs/audit-demo}
MODEL=${MODEL:-$(python -c "import kfac_mem.demo.model as m, os; print(os.path.join(m.ASSETS, 'demo-olmo2'))")}
[ -d "$DEMO/eigen" ] || kfac-mem demo --out "$DEMO"
mkdir -p "$OUT"
[ -d "$OUT/kfac-model" ] || kfac-mem edit --model "$MODEL" --eigen "$DEMO/eigen" --out "$OUT/kfac-model" \
  --layers 1-3 --projections gate,up,down --rho 0.825 --no-rank
[ -d "$OUT/svd-model" ] || kfac-mem edit --model "$MODEL" --method svd --out "$OUT/svd-model" \
  --layers 1-3 --projections gate,up,down --drop 0.75 --no-rank
SETS=(--memorized "validation=$DEMO/mined/memorized/validation.jsonl"
      --memorized "ood=$DEMO/mined/canaries/validation.jsonl" --clean "$DEMO/sets/heldout.npy")
for name in kfac svd unedited; do
  [ "$name" = unedited ] && m="$MODEL" || m="$OUT/$name-model"
  kfac-mem audit --model "$m" --baseline "$MODEL" "${SETS[@]}" --out "$OUT/$name" "${@:3}"
done
