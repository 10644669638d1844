#!/usr/bin/env bash
# README command 1: install sss-lightning, get Fashion-MNIST, run the quick SSS train-and-prune.
# Fashion-MNIST comes from Debian's dataset-fashion-mnist package where apt-get can install it (no
# internet needed beyond the package mirror); elsewhere torchvision downloads it on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE="${WANDB_MODE:-offline}"

python -m pip install --quiet -e .
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null \
   && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
    || echo "apt-get could not install dataset-fashion-mnist; torchvision will download Fashion-MNIST"
fi
exec sss-lightning fit --config experiments/fashion_mnist_quick.yaml "$@"
