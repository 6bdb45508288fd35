#!/usr/bin/env bash
# Table 1 of the paper (§5.2) on one GPU: Cora and Pubmed, the baseline and the five methods,
# 10 seeds trained as one batched program per (data set, method), the paper's training (SGD,
# lr 1e-3, momentum 0.9, weight decay 5e-4, up to 2000 epochs) with early stopping after 200
# epochs without a better validation accuracy. The 12 processes share the GPU; each stops
# starting epochs after TIME_LIMIT minutes (the JSON then marks its runs out_of_time).
#
#   bash recipes/gnn_citation/gpu_table1.sh [OUT_DIR] [extra flags of recipes.gnn_citation.run]
#
# Environment: PYTHON (default python), DEVICE (default cuda), DATASETS (default "cora pubmed"),
# METHODS (default "baseline bptt tbptt rbp cg neumann"), EPOCHS (2000), PATIENCE (200),
# TIME_LIMIT (minutes, default 10), FIGDIR (default docs/results), TAG (default _gpu2000).
# Data: $HYPERGRAD_DATA/planetoid, as for the recipe.
set -euo pipefail
out=${1:-runs/gnn/gpu2000}
shift || true
py=${PYTHON:-python}
mkdir -p "$out"
pids=()
for d in ${DATASETS:-cora pubmed}; do
  for m in ${METHODS:-baseline bptt tbptt rbp cg neumann}; do
    "$py" -m recipes.gnn_citation.run --dataset "$d" --device "${DEVICE:-cuda}" --methods "$m" --seeds 0-9 \
      --epochs "${EPOCHS:-2000}" --patience "${PATIENCE:-200}" --time-limit "${TIME_LIMIT:-10}" --no-progress \
      --out "$out/${d}_$m.json" "$@" > "$out/${d}_$m.log" 2>&1 &
    pids+=($!)
  done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
if [ "$status" -ne 0 ]; then
  echo "some runs failed; see $out/*.log" >&2
fi
"$py" -m recipes.gnn_citation.run --plot-only "$out"/*.json --figdir "${FIGDIR:-docs/results}" --tag "${TAG:-_gpu2000}"
exit "$status"
