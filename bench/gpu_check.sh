#!/usr/bin/env bash
# For a session lent a GPU: the batched-env throughput and PPO time-to-solved on CUDA, in under
# 5 minutes. The GPU image has torch but not gymnasium or stable-baselines3: carry their wheels
# (see the device tool's README) and install them before running this from the repo root:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch; assert torch.cuda.is_available(); print('torch', torch.__version__, torch.cuda.get_device_name())"
# (a) throughput at 1..16384 envs and (b) time to solved, 1 seed each to fit the 5 minutes.
timeout 280 python bench/batched.py --device cuda --seeds 1 --threads 1
