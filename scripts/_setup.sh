# Sourced by the scripts: create .venv and install the package with the extras named in $EXTRAS.
# Idempotent; a fresh machine needs only Python >= 3.11.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)-${EXTRAS:-none}"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[${EXTRAS:-speedups}]"
  touch "$stamp"
fi
