#!/usr/bin/env bash
# The GPU checks, in one call, for a session that is lent a CUDA machine (see the device tool's README):
# the Triton tests compiled (TRITON_INTERPRET=0, the full grid), the Triton ops benchmark, and the GPU presets of the
# flow length and FlowGRPO overhead tables. Every table goes to $OUT (at most 8 files come back); record the
# figures in RESULTS.md with the card's name (gpu.txt).
#
# The device image has torch and triton but not every package the plugin imports, and cannot reach PyPI. Carry
# wheels made here (pure Python, ~19 MB; the image's huggingface_hub, accelerate, peft, pyarrow are used):
#
#   mkdir -p .git/info && echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl transformers==5.24.0 trl==1.16.0 datasets==5.2.0 dill==0.4.1 \
#       multiprocess==0.70.19 math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 \
#       tokenizers==0.23.3
#
# then one device call:   run(command="bash benchmarks/gpu_checks.sh", carry=[".whl"], timeout_s=600)
# Budget: at most ~10 minutes (150 + 200 + 120 + 120 s limits; each step is cut at its own limit, so a hang costs one step).
set -u
OUT=${OUT:-runs/gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

step() {  # step <seconds> <output file> <command...>: run, keep its output, go on whatever it returns
    local limit=$1 file=$2
    shift 2
    echo "=== $(date -u +%T) $* (limit ${limit}s) -> $file"
    timeout "$limit" "$@" > "$OUT/$file" 2>&1
    echo "=== exit $? after $SECONDS s"
    tail -n 25 "$OUT/$file"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch, triton, transformers, trl; print('torch', torch.__version__, 'triton', triton.__version__,
'transformers', transformers.__version__, 'trl', trl.__version__, torch.cuda.get_device_name())"
} > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

step 150 triton_tests.txt python3 -m pytest -q -p no:cacheprovider tests/triton -m "slow or not slow" -x -rs
step 200 dla_gpu.md python3 -m benchmarks.dla_gpu --seq_lens 2048 4096 8192  # prints at the end: keep it short
step 120 flow_length.md python3 -m benchmarks.flow_length --device cuda --output "$OUT/flow_length.jsonl"
step 120 flow_overhead.md python3 -m benchmarks.flow_overhead --preset gpu-0.6b --device cuda
echo "=== done after $SECONDS s"
