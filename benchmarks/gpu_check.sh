#!/usr/bin/env bash
# GPU check, for a machine with one CUDA device (run from the repository root).
# 1. the test suite (without the vLLM CPU tests) with the device visible, so
#    Keras' torch backend places every tensor on CUDA;
# 2. the Q-Former train-step benchmark in bfloat16 and float32 on CUDA.
# On a machine without package-index access, put the wheels it lacks (keras,
# keras-hub, ...) in .whl/ (git-ignored): they are installed into a temporary
# folder first. Logs go to $OUT when it is set, else to a temporary folder.
set -uo pipefail
if compgen -G ".whl/*.whl" > /dev/null; then
  site=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl && export PYTHONPATH="$site:$PWD"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # benchmarks/ import kdpvlpa
fi
export PYTHONUNBUFFERED=1 KERAS_BACKEND=torch
python3 -c "import torch; print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))"
out=${OUT:-$(mktemp -d)}
echo "logs in $out"
# Each step runs even if an earlier one failed; the exit status says whether all passed.
status=0
timeout 300 python3 -m pytest -q -x -m "not vllm and not slow" tests 2>&1 \
  | tee "$out/gpu_tests.log" | tail -5 || status=1
python3 benchmarks/qformer_train_step.py --device cuda --dtype bfloat16 --threads 16 \
  --steps 20 --warmup 5 2>&1 | tee "$out/gpu_bench_bf16.log" | tail -4 || status=1
python3 benchmarks/qformer_train_step.py --device cuda --dtype float32 --threads 16 \
  --steps 20 --warmup 5 2>&1 | tee "$out/gpu_bench_fp32.log" | tail -4 || status=1
echo "gpu_check: $([ $status = 0 ] && echo all steps passed || echo a step FAILED)"
exit $status
