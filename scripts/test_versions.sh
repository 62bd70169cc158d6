#!/usr/bin/env bash
# Run the test suite against other releases of chemtag's dependencies, leaving .venv as it is: the
# packages named are installed, without their own dependencies, into a temporary folder that goes first
# on PYTHONPATH for the run. Name every package the releases need that .venv lacks or holds at another
# version, e.g. the oldest transformers chemtag supports:
#
#   bash scripts/test_versions.sh transformers==5.0.0 tokenizers==0.22.2 huggingface_hub==1.33.0 \
#       httpx==0.28.1 httpcore==1.0.9
#
# Extra arguments for pytest follow `--`: bash scripts/test_versions.sh pandas==3.0.6 -- tests/test_fuzz.py
set -euo pipefail
cd "$(dirname "$0")/.."
packages=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do packages+=("$1"); shift; done
[ $# -gt 0 ] && shift
if [ ${#packages[@]} -eq 0 ]; then
  echo "usage: bash scripts/test_versions.sh PACKAGE==VERSION ... [-- PYTEST_ARGS ...]" >&2
  exit 2
fi
overlay=$(mktemp -d)
trap 'rm -rf "$overlay"' EXIT
.venv/bin/python -m pip install --quiet --no-deps --target "$overlay" "${packages[@]}"
export PYTHONPATH="$overlay${PYTHONPATH:+:$PYTHONPATH}"
.venv/bin/python -c "
import importlib.metadata as metadata
for name in ('torch', 'transformers', 'tokenizers', 'huggingface_hub', 'pandas', 'numpy', 'peft'):
    print(name, metadata.version(name))"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
