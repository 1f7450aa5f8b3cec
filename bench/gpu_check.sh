#!/usr/bin/env bash
# For a session lent a GPU, in one call of about 6 minutes: the CUDA tests (tests/test_gpu.py, about
# 1 minute), bench/batched.py with one seed (env throughput, torch.compile and CUDA graphs, PPO
# time-to-solved; under 4 minutes) and bench/offpolicy.py's SAC update rate, rung against SB3, both
# on the GPU (under 2 minutes). The GPU image has torch, transformers and peft but not gymnasium or
# stable-baselines3: carry their wheels (see the device tool's README) and install them before
# running this from the repo root:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
# Logs go to $OUT (default bench/out) as well as to the terminal.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/out}
mkdir -p "$OUT" bench/out
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; assert torch.cuda.is_available(); print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log"
timeout 280 python3 bench/batched.py --device cuda --seeds 1 --repeats 1 --threads 1 2>&1 | tee "$OUT/gpu_batched.log"
cp bench/out/batched_throughput.png bench/out/batched.json "$OUT"/ 2>/dev/null
timeout 150 python3 bench/offpolicy.py --device cuda --seeds 1 --steps 3000 --skip-cheetah 2>&1 | tee "$OUT/gpu_offpolicy.log"
