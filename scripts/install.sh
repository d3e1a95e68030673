#!/usr/bin/env bash
# Install medmnist-bench into the active Python environment.
# Why three steps: `medmnist` declares torchvision, which pins its own torch build and would
# silently replace a CPU torch with a ~5 GB CUDA one. Nothing we import needs torchvision, so
# medmnist goes in with --no-deps (its real import-time deps are in our pyproject).
# Set TORCH_SPEC to choose another torch, e.g. TORCH_SPEC="torch==2.14.1" on a CUDA box.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
python -m pip install -q -e ".[dev]"
python -m pip install -q --no-deps "medmnist==3.0.2"
python -c "import bench, medmnist, torch, ray; print('medmnist-bench', bench.__version__, '| torch', torch.__version__, '| ray', ray.__version__)"
