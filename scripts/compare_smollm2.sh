#!/usr/bin/env bash
# The paper's Table 1 on SmolLM2-135M-Instruct (its Q4_1 GGUF, dequantized), fine-tuned to memorize real passages
# (`kfac-mem demo --preset smollm2`): K-FAC vs SVD vs BalancedSubnet at matched perplexity.
#
#   bash scripts/compare_smollm2.sh [SMOL_OUT] [COMPARE_OUT]
#
# Sized for a 2-core CPU (a 135M-parameter BSN step takes ~40 s there): K-FAC and SVD on the block
# the demo's sweep chose (layers 19-21 gate+up); BSN masks up/down of layers 19-29 for the paper's
# 5 epochs (10 steps on 13 windows), one loss weight (the paper's best, 0.7); relearning runs 10
# steps. On a GPU, override these (later arguments win) for the paper's full search, e.g.
#   CANDIDATES='23-25:gate,up;19-21:gate,up;27-29:gate,up' bash scripts/compare_smollm2.sh A B \
#     --bsn-layers all --bsn-loss-weights 0.1,0.3,0.5,0.7,0.9 --relearn-steps 50
set -euo pipefail
SMOL=${1:-runs/smollm2}
OUT=${2:-runs/compare-smollm2}
[ -d "$SMOL/eigen" ] && [ -f "$SMOL/sets/retain.npy" ] || kfac-mem demo --preset smollm2 --out "$SMOL"
kfac-mem compare --model "$SMOL/finetuned" --eigen "$SMOL/eigen" \
  --train "$SMOL/mined/train.jsonl" --validation "$SMOL/mined/validation.jsonl" \
  --text "$SMOL/sets/heldout.npy" --retain "$SMOL/sets/retain.npy" --retain-window 128 \
  --candidates "${CANDIDATES:-19-21:gate,up}" \
  --target-ratio "${TARGET_RATIO:-1.2}" --refine 1 \
  --bsn-layers 19-29 --bsn-loss-weights 0.7 --bsn-ratios 0.03,0.1,0.3 \
  --bsn-batch-size 8 --bsn-epochs 5 \
  --relearn-steps 10 --relearn-batch-size 4 --batch-size 16 \
  --out "$OUT" "${@:3}"
