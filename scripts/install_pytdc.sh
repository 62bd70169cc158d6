#!/usr/bin/env bash
# Install PyTDC 1.1.15 into .venv for the TDC benchmark groups, without its pins (numpy<2, pandas<3,
# transformers<4.51, ...), which would downgrade the stack: PyTDC with --no-deps, plus the two modules
# its import needs that the stack lacks. Fails if any package that was installed changed version.
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
before=$(mktemp)
trap 'rm -f "$before"' EXIT
"$python" -m pip freeze --all | sort > "$before"
"$python" -m pip install --quiet --no-deps PyTDC==1.1.15 fuzzywuzzy==0.18.0
# setuptools >= 81 no longer ships pkg_resources, which PyTDC imports: its last release as a package of its own
"$python" -c "import pkg_resources" 2>/dev/null \
  || "$python" -m pip install --quiet --no-deps pkg-resources-backport==1.0.1
changed=$(comm -23 "$before" <("$python" -m pip freeze --all | sort))
if [ -n "$changed" ]; then
  echo "installing PyTDC changed these packages (versions before):" >&2
  echo "$changed" >&2
  exit 1
fi
"$python" -c "from benchmarks.tdc_groups import pytdc_version; print('PyTDC', pytdc_version(), 'imports')"
"$python" -m pip list 2>/dev/null | grep -iE '^(numpy|pandas|torch|transformers) '
