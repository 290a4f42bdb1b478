#!/usr/bin/env bash
# The MQAR full setting (examples/recipes/dla_mqar.yaml) over seeds 0-2 for every mixer x memory, one model per
# process and one process at a time (for a small shared machine). Each model saves its rows when it is evaluated
# and is skipped once finished, so rerunning this script resumes an interrupted sweep:
#   nohup bash examples/repro/dla_mqar_seeds.sh > runs/dla_mqar_seeds.log 2>&1 &
#   python -m examples.repro.dla_mqar --summarize --output_dir runs/dla_mqar_seeds   # the mean +- std table so far
# Order: the Gated DeltaNet loglinear / dla pair first (the ordering in question), then the others seed by seed.
set -u
OUT=${OUT:-runs/dla_mqar_seeds}
PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

runs=()
for seed in 0 1 2; do runs+=("$seed gated_deltanet loglinear" "$seed gated_deltanet dla"); done
for seed in 0 1 2; do
    runs+=("$seed gated_deltanet vanilla" "$seed mamba2 dla" "$seed mamba2 loglinear" "$seed mamba2 vanilla")
    runs+=("$seed mamba2 reference" "$seed gated_deltanet reference")  # transformers' own models
done

for pass in 1 2; do  # the second pass retries any run that failed in the first
    for run in "${runs[@]}"; do
        read -r seed mixer memory <<< "$run"
        [ -f "$OUT/seed$seed/$mixer-$memory/results.json" ] && continue
        echo "=== $(date -u +%FT%TZ) pass $pass: seed $seed $mixer $memory"
        "$PYTHON" -m examples.repro.dla_mqar --config examples/recipes/dla_mqar.yaml --mixers "$mixer" --memories "$memory" \
            --seeds "$seed" --output_dir "$OUT" --disable_tqdm true || echo "=== failed: seed $seed $mixer $memory"
    done
done
echo "=== $(date -u +%FT%TZ) done"
