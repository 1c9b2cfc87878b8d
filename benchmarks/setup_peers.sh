#!/usr/bin/env bash
# Create the peer-tool venv for the core speed benchmark: benchmarks/.peers (gitignored).
#
# It holds the CPU torch wheel, numpy, scipy, the peers pinned below and an editable
# install of breakeven itself (--no-deps), so that benchmarks/peers.py and
# benchmarks/check_peers.py can import both sides.
#
# Idempotent: a package already installed at the wanted version is skipped; rerunning
# the script only re-checks the imports.
#
# Pitfalls this script avoids:
# - a bare `torch` requirement pulls a multi-GB CUDA build: every install here runs under
#   a constraint file that pins torch==2.13.0 (a CPU wheel on local disk, via pip's
#   configured find-links);
# - BackPACK declares `torchvision` (it never imports it for what we use) and curvlinops
#   declares BackPACK: both are installed with --no-deps and their real runtime
#   dependencies are listed by hand below (from their wheel metadata, checked by import);
# - hessian-eigenthings 1.0.0a5 is a pre-release: pinning the exact version is enough for
#   pip to accept it.
#
# Usage: bash benchmarks/setup_peers.sh        (from anywhere)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="$HERE/.peers"
PY="$VENV/bin/python"

TORCH_VERSION="2.13.0"
PYHESSIAN_VERSION="0.1"
EIGENTHINGS_VERSION="1.0.0a5"
CURVLINOPS_VERSION="3.0.1"
BACKPACK_VERSION="1.7.1"

if [ ! -x "$PY" ]; then
    echo "creating venv $VENV"
    python3 -m venv "$VENV"
fi

CONSTRAINTS="$VENV/peer-constraints.txt"
printf 'torch==%s\n' "$TORCH_VERSION" >"$CONSTRAINTS"

pip_install() {
    "$PY" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS" "$@"
}

# installed_version DIST -> prints the installed version or nothing
installed_version() {
    "$PY" - "$1" <<'EOF'
import sys
from importlib import metadata

try:
    print(metadata.version(sys.argv[1]))
except metadata.PackageNotFoundError:
    pass
EOF
}

# ensure DIST VERSION [pip options...]: install DIST==VERSION unless already there.
# A local-version suffix (torch's "+cpu") counts as the same version.
ensure() {
    local dist="$1" version="$2"
    shift 2
    local have
    have="$(installed_version "$dist")"
    if [ "${have%%+*}" = "$version" ]; then
        echo "ok       $dist $have"
    else
        echo "install  $dist==$version${have:+ (had $have)}"
        pip_install "$@" "$dist==$version"
    fi
}

# ensure_any DIST...: install each DIST (unpinned, under the torch constraint) if missing.
ensure_any() {
    local dist have
    for dist in "$@"; do
        have="$(installed_version "$dist")"
        if [ -n "$have" ]; then
            echo "ok       $dist $have"
        else
            echo "install  $dist"
            pip_install "$dist"
        fi
    done
}

ensure torch "$TORCH_VERSION"
ensure_any numpy scipy

# PyHessian 0.1: requires numpy, torch only.
ensure pyhessian "$PYHESSIAN_VERSION"
# hessian-eigenthings 1.0.0a5: requires numpy, scipy, torch, tqdm (no torchvision).
ensure hessian-eigenthings "$EIGENTHINGS_VERSION"

# BackPACK 1.7.1 declares torch, torchvision, einops<1, unfoldNd<1; torchvision is only
# imported by backpack.utils.examples (MNIST loaders), which we never use. Its real
# dependencies go in first, then BackPACK with --no-deps (pip then prints a harmless
# "backpack-for-pytorch requires torchvision, which is not installed" notice).
ensure_any einops unfoldNd packaging
ensure backpack-for-pytorch "$BACKPACK_VERSION" --no-deps
# curvlinops 3.0.1 declares backpack-for-pytorch, torch, scipy, numpy, tqdm, einops,
# einconv, linear_operator, opt-einsum: all but BackPACK are torchvision-free, so they
# install normally (under the torch pin); curvlinops itself with --no-deps.
ensure_any tqdm einconv linear_operator opt-einsum
ensure curvlinops-for-pytorch "$CURVLINOPS_VERSION" --no-deps

# breakeven itself, editable, without its dependencies (torch etc. are already here).
if [ -n "$(installed_version breakeven)" ]; then
    echo "ok       breakeven $(installed_version breakeven) (editable)"
else
    echo "install  breakeven -e $ROOT"
    pip_install --no-deps -e "$ROOT"
fi

# Check: every peer imports beside the CPU torch, and torch is still the pinned wheel.
"$PY" - "$TORCH_VERSION" <<'EOF'
import sys
from importlib import metadata

import torch

want = sys.argv[1]
assert torch.__version__.split("+")[0] == want, f"torch {torch.__version__} != {want}"

import backpack  # noqa: E402,F401
import curvlinops  # noqa: E402,F401
import hessian_eigenthings  # noqa: E402,F401
import numpy  # noqa: E402,F401
import pyhessian  # noqa: E402,F401
import scipy  # noqa: E402,F401

try:  # breakeven is work in progress beside this venv: warn, don't fail, if it breaks
    import breakeven  # noqa: F401
except Exception as exc:  # noqa: BLE001
    print(f"WARNING: breakeven does not import: {exc!r}")

print(f"torch {torch.__version__}")
for dist in (
    "numpy",
    "scipy",
    "pyhessian",
    "hessian-eigenthings",
    "curvlinops-for-pytorch",
    "backpack-for-pytorch",
    "einops",
    "unfoldNd",
    "einconv",
    "linear_operator",
    "opt-einsum",
    "tqdm",
):
    print(f"{dist} {metadata.version(dist)}")
try:
    metadata.version("torchvision")
    print("WARNING: torchvision is installed in the peers venv")
except metadata.PackageNotFoundError:
    pass
print("peers venv ready:", sys.prefix)
EOF
