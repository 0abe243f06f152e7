#!/usr/bin/env bash
# OLMo-2 1B (allenai/OLMo-2-0425-1B, 16 layers). The paper does not publish its 1B layers or rho;
# this recipe sweeps the layers at about 75% depth (11-13) at rho 0.6 and 0.8, as third-party
# reproductions do, and evaluates each. Usage as scripts/paper_olmo2_7b.sh.
set -euo pipefail
MODEL=${1:?MODEL_DIR}; CORPUS=${2:?CORPUS}; OUT=${3:?OUT}; shift 3
PLACEMENT=("$@")

kfac-mem collect --model "$MODEL" --dtype bfloat16 --data "$CORPUS" --seq-len 512 \
  --mode sampled --layers 11-13 --projections gate,up --max-tokens 20000000 \
  --batch-size 64 --out "$OUT/factors" "${PLACEMENT[@]}"
kfac-mem decompose --factors "$OUT/factors" --out "$OUT/eigen" "${PLACEMENT[@]}"
for RHO in 0.6 0.8; do
  kfac-mem edit --model "$MODEL" --dtype bfloat16 --param-dtype bfloat16 --eigen "$OUT/eigen" \
    --layers 11,12,13 --projections gate,up --rho "$RHO" --out "$OUT/edited-rho$RHO" "${PLACEMENT[@]}"
  if [ -f "$OUT/mined/validation.jsonl" ]; then
    kfac-mem evaluate --model "$OUT/edited-rho$RHO" --baseline "$MODEL" \
      --memorized dolma_val="$OUT/mined/validation.jsonl" --suites recitation,perplexity,ndcg \
      --out "$OUT/eval-rho$RHO" "${PLACEMENT[@]}"
  fi
done
