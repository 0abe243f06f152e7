#!/usr/bin/env bash
# Your own model, start to finish, one stage at a time: export it as an HF checkpoint, collect
# factors and extend them, decompose, mine what it recites, sweep a grid with a choice rule, and
# write the chosen edit as an HF checkpoint. Each stage writes config.yaml beside its outputs and
# reads upstream artifacts by path; rerunning the script skips finished stages.
#
# "Your model" here is SmolLM2-135M-Instruct (the smollm2-135m preset: its Q4_1 GGUF, dequantized)
# after `kfac-mem demo --preset smollm2` fine-tuned it to memorize 32 LAMBADA passages: that run's
# finetuned/ directory, made first when absent. Bring your own with MODEL=<HF dir, .gguf, Orbax
# model or preset>, PASSAGES=<jsonl of the texts you suspect it memorized>, CORPUS=<jsonl of
# general text for the factors> and HELDOUT=<jsonl of held-out text of the same kind, for
# perplexity>, and adjust --layers / --layer-sets to its depth.
#
#   bash scripts/own_model_stage_by_stage.sh [OUT]
set -euo pipefail
OUT=${1:-runs/own-model}
SMOL=${SMOL:-runs/smollm2}
MODEL=${MODEL:-$SMOL/finetuned}
[ -e "$MODEL" ] || kfac-mem demo --preset smollm2 --out "$SMOL"
mkdir -p "$OUT"
CORPUS=${CORPUS:-$OUT/corpus.jsonl}
PASSAGES=${PASSAGES:-$OUT/passages.jsonl}
HELDOUT=${HELDOUT:-$OUT/heldout.jsonl}
# The demo's text, one {"text": ...} row per passage: 400 passages of its general LAMBADA slice
# (the factor corpus), the 96 candidates it drew the memorized passages from, and its held-out
# passages (never trained on).
python - "$CORPUS" "$PASSAGES" "$HELDOUT" <<'EOF'
import json, os, sys
from kfac_mem.demo.smollm2 import smol_passages
texts = smol_passages(seed=0, n_memorized=32)
rows = (texts["general"][:400], texts["candidates"], texts["heldout"])
for path, rows in zip(sys.argv[1:], rows):
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in rows)
EOF

# 1. The model as an HF checkpoint with its tokenizer (skip this if yours already is one).
M=$OUT/model-hf
[ -d "$M" ] || kfac-mem export --model "$MODEL" --out "$M"
# 2. Factors: 4,096 tokens, then the same command with a larger budget extends the run.
COLLECT=(kfac-mem collect --model "$M" --data "$CORPUS" --seq-len 128 --mode sampled
         --layers 19,20,21,23,24,25 --projections gate,up --batch-size 8 --out "$OUT/factors")
[ -d "$OUT/factors" ] || "${COLLECT[@]}" --max-tokens 4096
"${COLLECT[@]}" --max-tokens 8192   # also resumes an interrupted run; a no-op once complete
# 3. Eigenbases of every A and G.
[ -d "$OUT/eigen" ] || kfac-mem decompose --factors "$OUT/factors" --out "$OUT/eigen"
# 4. What the model recites: 32-token prefix, 32-token suffix, split by passage.
[ -d "$OUT/mined" ] || kfac-mem mine --model "$M" --corpus "$PASSAGES" --prefix-len 32 \
  --suffix-len 32 --stride 32 --out "$OUT/mined"
# 5. Choose on the train split within 1.3x perplexity (of held-out text), report on the held-out
#    split against the unedited model and SVD / random-basis controls, and write the choice as an
#    HF checkpoint.
[ -d "$OUT/sweep" ] || kfac-mem sweep --model "$M" --eigen "$OUT/eigen" \
  --train "$OUT/mined/train.jsonl" --heldout "validation=$OUT/mined/validation.jsonl" \
  --layer-sets 19-21,23-25 --projection-sets gate+up --rhos 0.8,0.9 \
  --text "$HELDOUT" --max-perplexity-ratio 1.3 --text-windows 32 --controls svd,random \
  --out "$OUT/sweep" --export-hf "$OUT/chosen-hf"
echo "chosen edit: $OUT/chosen-hf (report: $OUT/sweep/report.md)"
