#!/usr/bin/env bash
# What benchmarks/gpu.sh needs on a lent GPU machine that its image lacks, packed into .gpu/ (ignored by git) for the
# device tool to carry: the wheels of hydra-core, omegaconf, antlr4 and this machine's lightning (the image has
# torch, torchvision, torchmetrics, tensorboard, pandas, matplotlib, rich, filelock, but no Hydra and nothing from
# outside), Fashion-MNIST's four files and tinyshakespeare. About 32 MB. Run once, here:
#   bash benchmarks/gpu_pack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
pack=.gpu
rm -rf "$pack" && mkdir -p "$pack/whl" "$pack/data"

version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
# Pure-Python wheels: they install under the image's Python 3.12 as under this one. antlr4's 4.9.3 (what omegaconf
# 2.3 needs) is published as a source archive only, so it is built into a wheel here.
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$pack/whl" \
  "hydra-core==$(version hydra-core)" "omegaconf==$(version omegaconf)" "lightning==$(version lightning)"
python -m pip wheel -q --no-deps -w "$pack/whl" "antlr4-python3-runtime==$(version antlr4-python3-runtime)"

fashion=/usr/share/datasets/fashion-mnist  # README, set-up: the Debian package
text=../shared/datasets/tinyshakespeare.txt
[ -d "$fashion" ] || { echo "error: $fashion is missing: apt-get install -y dataset-fashion-mnist" >&2; exit 2; }
[ -f "$text" ] || { echo "error: $text is missing: the shared datasets folder is not beside this checkout" >&2; exit 2; }
cp "$fashion"/*-ubyte.gz "$text" "$pack/data/"
du -sh "$pack"/* | sed 's/^/packed: /'
