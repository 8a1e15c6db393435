# Sourced by scripts/demo and scripts/test: make .venv and install this repo's packages into it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
extras=${MESHLIB_EXTRAS:-}  # of meshlib itself, e.g. [dev]
integration_extras=${MESHLIB_INTEGRATION_EXTRAS-$extras}  # of the integrations (default: the same)
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}"
for pkg in integrations/*/; do
  if [ -f "${pkg}pyproject.toml" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "${pkg}${integration_extras}"
  fi
done
