#!/usr/bin/env bash
# The compiles behind docs/scale.md: `kfac-mem plan` for the paper's OLMo-2 settings on TPU
# topologies (compile-only devices from libtpu; no TPU needed). Each row writes OUT/<name>/plan.{json,md}.
# Usage: scripts/plan_scale.sh [OUT] [ROW...]   (default OUT=docs/scale, all rows in order)
set -u
OUT=${1:-docs/scale}; shift || true
PLAN="${PYTHON:-.venv/bin/python} -m kfac_mem.cli plan"
RECIPE="--layers 23-25 --projections gate,up --seq-len 512 --mode sampled"
ALLMLP="--projections gate,up,down --seq-len 512 --mode sampled"  # every layer (issue: all-MLP collection)
declare -A ROWS=(
  [7b-recipe-v5e8-b16]="--model olmo2-7b --topology v5e:2x4 --stage collect --batch-size 16 $RECIPE --no-search"
  [7b-recipe-v5e8-b32]="--model olmo2-7b --topology v5e:2x4 --stage collect --batch-size 32 $RECIPE --no-search"
  [7b-recipe-v5p8-b16]="--model olmo2-7b --topology v5p:2x2x1 --stage collect --batch-size 16 $RECIPE --no-search"
  [7b-decompose-v5e8]="--model olmo2-7b --topology v5e:2x4 --stage decompose --layers 23-25 --projections gate,up"
  [7b-edit]="--model olmo2-7b --topology v5e:2x4 --stage edit --layers 23 --projections gate"
  [7b-generate-v5e8]="--model olmo2-7b --topology v5e:2x4 --stage generate --batch-size 32 --seq-len 64 --max-new-tokens 48 --no-search"
  [7b-bsn-v5p8]="--model olmo2-7b --topology v5p:2x2x1 --stage bsn --batch-size 8 --seq-len 112 --layers 23-25 --projections up,down --no-search"
  [7b-recipe-v5p64]="--model olmo2-7b --topology v5p:4x4x2 --stage collect --batch-size 256 $RECIPE --no-search"
  [7b-recipe-v5p64x2]="--model olmo2-7b --topology v5p:4x4x2 --num-slices 2 --mesh-axis data=2 --stage collect --batch-size 512 $RECIPE --no-search"
  [7b-recipe-v6e8-b16]="--model olmo2-7b --topology v6e:2x4 --stage collect --batch-size 16 $RECIPE --no-search"
  [7b-recipe-v5e8-search]="--model olmo2-7b --topology v5e:2x4 --stage collect --batch-size 16 $RECIPE --max-search-compiles 4"
  [7b-recipe-v5p8-search]="--model olmo2-7b --topology v5p:2x2x1 --stage collect --batch-size 16 $RECIPE --max-search-compiles 4"
  [1b-allmlp-v5e8-b32-before]="--model olmo2-1b --topology v5e:2x4 --stage collect --batch-size 32 $ALLMLP --reduce checkpoint --no-search"
  [1b-allmlp-v5e8]="--model olmo2-1b --topology v5e:2x4 --stage collect --batch-size 32 $ALLMLP --max-search-compiles 3"
  [7b-allmlp-v5e8-b8-before]="--model olmo2-7b --topology v5e:2x4 --stage collect --batch-size 8 $ALLMLP --reduce step --scheme scatter --no-search"
  [7b-allmlp-v5e8]="--model olmo2-7b --topology v5e:2x4 --stage collect --batch-size 8 $ALLMLP --max-search-compiles 3"
  [7b-allmlp-v5p8]="--model olmo2-7b --topology v5p:2x2x1 --stage collect --batch-size 8 $ALLMLP --max-search-compiles 3"
  [7b-allmlp-v6e8]="--model olmo2-7b --topology v6e:2x4 --stage collect --batch-size 8 $ALLMLP --max-search-compiles 3"
  [8b-llama3-recipe-v5e8]="--model llama3-8b --topology v5e:2x4 --stage collect --batch-size 16 $RECIPE --no-search"
  [1b-recipe-v5e8]="--model olmo2-1b --topology v5e:2x4 --stage collect --batch-size 32 --layers 11-13 --projections gate,up --seq-len 512 --mode sampled --max-search-compiles 3"
  [13b-recipe-v5p8]="--model olmo2-13b --topology v5p:2x2x1 --stage collect --batch-size 16 --layers 29-31 --projections gate,up --seq-len 512 --no-search"
  [32b-recipe-v5p16]="--model olmo2-32b --topology v5p:2x2x2 --stage collect --batch-size 16 --layers 47-49 --projections gate,up --seq-len 512 --no-search"
  [7b-recipe-seq4096-v5p8]="--model olmo2-7b --topology v5p:2x2x1 --stage collect --batch-size 4 --layers 23-25 --projections gate,up --seq-len 4096 --no-search"
)
# Rows compiled for docs/scale.md, in this order.
ORDER=(7b-allmlp-v5e8 1b-allmlp-v5e8 7b-allmlp-v5e8-b8-before 1b-allmlp-v5e8-b32-before
       7b-allmlp-v5p8 7b-allmlp-v6e8 7b-recipe-v5e8-b16 7b-recipe-v5e8-b32 7b-recipe-v5p8-b16
       7b-recipe-v6e8-b16 7b-recipe-v5p64 7b-recipe-v5p64x2 7b-edit 1b-recipe-v5e8
       13b-recipe-v5p8 32b-recipe-v5p16 8b-llama3-recipe-v5e8 7b-generate-v5e8 7b-bsn-v5p8
       7b-recipe-seq4096-v5p8 7b-recipe-v5e8-search 7b-recipe-v5p8-search 7b-decompose-v5e8)
[ $# -gt 0 ] && ORDER=("$@")
for name in "${ORDER[@]}"; do
  args=${ROWS[$name]:?unknown row $name}
  mkdir -p "$OUT/$name"
  echo "== $name: kfac-mem plan $args"
  start=$(date +%s)
  # shellcheck disable=SC2086
  $PLAN $args --out "$OUT/$name" > "$OUT/$name/log.txt" 2>&1
  echo "   rc=$? in $(( $(date +%s) - start )) s"
done
