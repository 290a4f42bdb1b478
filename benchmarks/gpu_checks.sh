#!/usr/bin/env bash
# The GPU checks, in one device call, for a session that is lent a CUDA machine (see the device tool's README):
#
#   bash benchmarks/gpu_checks.sh --wheels   # here, once: download the wheels to carry into .whl (pip, registry)
#   run(command="bash benchmarks/gpu_checks.sh", carry=[".whl"], timeout_s=540)   # the device call
#   bash benchmarks/gpu_checks.sh --cpu      # the same steps on this CPU: Triton's interpreter, tiny shapes
#
# Steps, each cut at its own time limit (a hang costs one step) and each writing its table to $OUT as rows arrive
# (at most 8 files come back from the device; record the figures in RESULTS.md with the card's name, gpu.txt):
#   gpu.txt          the card, driver, torch / triton / transformers / trl / fla versions
#   triton_aot.md    every kernel of the benchmark's shapes compiled for this card, timed (the first compile)
#   dla_gpu.md       parity with the naive op on the card, then fwd + bwd time / memory, T = 2K .. 16K, with
#                    fla's own chunk_simple_gla / chunk_gated_delta_rule rows beside ours
#   triton_tests.txt tests/triton with the compiled kernels (TRITON_INTERPRET=0), the full grid
#   flow_length.md, flow_overhead.md   the flow scorer's GPU presets
# Budget: the limits add up to 460 s (30 + 60 + 170 + 110 + 50 + 40), plus ~15 s of wheel installs: under 8
# minutes even if every step runs to its limit, inside timeout_s=540. The exit status is 1 if any step failed.
#
# --cpu runs every step the same way on tiny shapes (the interpreter; sm_90 compile of one small shape), writing
# the same files, so that a typo, a missing wheel or a wrong flag fails here (tests/triton/test_gpu_checks.py)
# and not on the device. The device image has torch and triton but not every package the plugin imports, and
# cannot reach PyPI: the wheels below are pure Python (~20 MB; the image's huggingface_hub, accelerate, peft,
# pyarrow and einops are used).
set -u
WHEELS=(transformers==5.24.0 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 math-verify==0.9.0
    latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 tokenizers==0.23.3
    flash-linear-attention==0.5.2 fla-core==0.5.2)
MODE=gpu
PYTHON=${PYTHON:-python3}
case "${1:-}" in
    --cpu) MODE=cpu ;;
    --wheels)
        # .whl/ is in .gitignore: it travels only because the device call names it in carry
        exec $PYTHON -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl "${WHEELS[@]}" ;;
    "") ;;
    *) echo "usage: bash benchmarks/gpu_checks.sh [--cpu | --wheels]"; exit 2 ;;
esac
OUT=${OUT:-runs/gpu_checks_$MODE}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then  # the device's install; in CPU mode into a scratch folder, to check that the wheels install
    for wheel in "${WHEELS[@]}"; do
        name=${wheel%%==*}
        ls .whl/"${name//-/_}"-"${wheel##*==}"-*.whl > /dev/null 2>&1 \
            || ls .whl/"$name"-"${wheel##*==}"-*.whl > /dev/null 2>&1 \
            || { echo "wheel missing in .whl: $wheel (bash benchmarks/gpu_checks.sh --wheels)"; exit 1; }
    done
    SITE=$(mktemp -d)
    # for the device's Python 3.12 (here too, where the wheels are only installed, not imported)
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        --python-version 3.12 --implementation cp --only-binary=:all: .whl/*.whl || { echo "wheel install failed"; exit 1; }
    [ "$MODE" = gpu ] && export PYTHONPATH=$SITE
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

FAILED=()
step() {  # step <seconds> <output file> <command...>: run, keep its output, go on whatever it returns
    local limit=$1 file=$2 status
    shift 2
    [ "$MODE" = cpu ] && limit=${CPU_STEP_LIMIT:-900}  # a shared CPU is slow and its speed is not what is checked
    echo "=== $(date -u +%T) $* (limit ${limit}s) -> $file"
    timeout "$limit" "$@" > "$OUT/$file" 2>&1
    status=$?
    echo "=== exit $status after $SECONDS s"
    [ $status = 0 ] || FAILED+=("$file")
    tail -n 25 "$OUT/$file"
}

if [ "$MODE" = gpu ]; then
    INTERPRET=0 AOT=(--arch native --shapes benchmark) TESTS=(tests/triton -m "slow or not slow")
    DLA=(--seq_lens 2048 4096 8192 16384) LENGTH=(--device cuda) OVERHEAD=(--preset gpu-0.6b --device cuda)
else
    INTERPRET=1 AOT=(--arch 90 --shapes tiny --jobs 1) TESTS=(-m "not slow"
        tests/triton/test_triton_inputs.py::test_dispatch_selects_the_triton_ops  # the runner and its flags; quick ones
        tests/triton/test_triton_inputs.py::test_initial_state_must_be_float32
        tests/triton/test_triton_inputs.py::test_unsupported_chunk_size_is_rejected)
    DLA=(--tiny --check) LENGTH=(--device cpu --lengths 256 --repeats 1)
    OVERHEAD=(--preset cpu-tiny --device cpu --repeats 1)
fi

step 30 gpu.txt bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo 'no GPU: CPU mode';
    $PYTHON -c \"import torch, triton, transformers, trl; print('torch', torch.__version__, 'triton',
triton.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__,
torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU')\";
    $PYTHON -c \"import importlib.metadata as m; print('fla', m.version('flash-linear-attention'))\" 2>&1 | tail -n 1"
# The compile step before the first launch: the kernels' first compile, timed, and Triton's cache warmed for the rest.
step 60 triton_aot.md env TRITON_INTERPRET=0 $PYTHON -m benchmarks.triton_aot "${AOT[@]}"
# First the parity table on the card (a mismatch with the interpreter is the first thing to fix), then the timings.
step 170 dla_gpu.md env TRITON_INTERPRET=$INTERPRET $PYTHON -m benchmarks.dla_gpu "${DLA[@]}"
# tests/triton minus the two that run this script or compile for other cards (covered by the steps around it).
step 110 triton_tests.txt env TRITON_INTERPRET=$INTERPRET $PYTHON -m pytest -q -p no:cacheprovider "${TESTS[@]}" \
    -x -rs -k "not gpu_checks and not ahead_of_time"
step 50 flow_length.md $PYTHON -m benchmarks.flow_length "${LENGTH[@]}" --output "$OUT/flow_length.jsonl"
step 40 flow_overhead.md $PYTHON -m benchmarks.flow_overhead "${OVERHEAD[@]}"
echo "=== done after $SECONDS s; failed steps: ${FAILED[*]:-none}"
[ ${#FAILED[@]} = 0 ]
