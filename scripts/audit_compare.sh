#!/usr/bin/env bash
# `kfac-mem audit` of every model a `kfac-mem compare ... --save-models` run matched to one
# perplexity (K-FAC, SVD, BSN) and of the unedited model, on the compare run's held-out memorized
# sets (validation, and OOD when it had one) against its held-out text; then the side-by-side
# table with paired tests that docs/comparison.md carries (scripts/audit_table.py -> OUT/table.md).
# The unedited model skips relearning (it recites everything before any). Finished audits are kept.
#
#   bash scripts/audit_compare.sh COMPARE_DIR AUDIT_OUT [extra audit flags...]
#   e.g. bash scripts/audit_compare.sh runs/compare-demo runs/audit-demo
set -euo pipefail
COMPARE=$1
OUT=$2
read -r MODEL VAL OOD TEXT < <(python - "$COMPARE/config.yaml" <<'PY'
import sys, yaml
flags = yaml.safe_load(open(sys.argv[1]))["flags"]
print(flags["model"], flags["validation"], flags["ood"] or "-", flags["text"][0])
PY
)
SETS=(--memorized "validation=$VAL" --clean "$TEXT")
[ "$OOD" = - ] || SETS+=(--memorized "ood=$OOD")
mkdir -p "$OUT"
[ -f "$OUT/unedited/results.json" ] || kfac-mem audit --model "$MODEL" --baseline "$MODEL" \
  "${SETS[@]}" --attacks sampling,beam,prefix,membership --out "$OUT/unedited" "${@:3}"
TABLE=("unedited=$OUT/unedited")
for m in kfac svd bsn; do
  [ -d "$COMPARE/models/$m" ] || continue
  [ -f "$OUT/$m/results.json" ] || kfac-mem audit --model "$COMPARE/models/$m" --baseline "$MODEL" \
    "${SETS[@]}" --out "$OUT/$m" "${@:3}"
  TABLE+=("$m=$OUT/$m")
done
python scripts/audit_table.py "${TABLE[@]}" > "$OUT/table.md"
echo "audit table: $OUT/table.md"
