#!/usr/bin/env bash
# The paper's OLMo-2 7B setting end to end (docs/design.md §2.6): factors from ~20M tokens of a
# pretraining-like corpus with sampled labels at sequence length 512, eigendecomposition, the edit
# of layers 23-25 gate_proj + up_proj at rho = 0.6 (down_proj untouched), then evaluation.
#
# Usage:
#   scripts/paper_olmo2_7b.sh MODEL_DIR CORPUS OUT [placement flags]
#     MODEL_DIR  an HF checkpoint directory of allenai/OLMo-2-1124-7B (config.json + safetensors)
#     CORPUS     text/jsonl files or a .npy [windows, 512] token array (~20M tokens)
#     OUT        run directory
#   placement flags, e.g.
#     one 8-GPU node:     --mesh fsdp
#     tensor parallel:    --mesh fsdp_tp --mesh-axis tensor=8
#     TPU pod slice:      --mesh fsdp --distributed            (run on every host)
#     SLURM / explicit:   --coordinator HOST:PORT --num-processes N --process-id I
set -euo pipefail
MODEL=${1:?MODEL_DIR}; CORPUS=${2:?CORPUS}; OUT=${3:?OUT}; shift 3
PLACEMENT=("$@")

kfac-mem collect --model "$MODEL" --dtype bfloat16 --data "$CORPUS" --seq-len 512 \
  --mode sampled --layers 23,24,25 --projections gate,up --max-tokens 20000000 \
  --batch-size 64 --out "$OUT/factors" "${PLACEMENT[@]}"
kfac-mem decompose --factors "$OUT/factors" --out "$OUT/eigen" --precision float32 "${PLACEMENT[@]}"
kfac-mem edit --model "$MODEL" --dtype bfloat16 --param-dtype bfloat16 --eigen "$OUT/eigen" \
  --layers-json '{"23": {"gate": 0.6, "up": 0.6}, "24": {"gate": 0.6, "up": 0.6}, "25": {"gate": 0.6, "up": 0.6}}' \
  --out "$OUT/edited" --export-hf "$OUT/edited-hf" "${PLACEMENT[@]}"
# Memorized sets: mine them from a sample of the training data first, e.g.
#   kfac-mem mine --model "$MODEL" --corpus dolma_sample.jsonl --out "$OUT/mined"
if [ -f "$OUT/mined/validation.jsonl" ]; then
  kfac-mem evaluate --model "$OUT/edited" --baseline "$MODEL" \
    --memorized dolma_val="$OUT/mined/validation.jsonl" --suites recitation,perplexity,ndcg,tasks \
    --out "$OUT/eval" "${PLACEMENT[@]}"
fi
