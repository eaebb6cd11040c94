#!/usr/bin/env bash
# Creates .venv-maxtext (Python 3.12, MaxText from PyPI) for scripts/bench_maxtext.py, the
# MaxText side of the bench36m comparison. MaxText is a benchmark peer only, never a
# dependency of llmjax, so it lives in its own venv.
#   scripts/setup_maxtext_env.sh [python3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python3.12}
"$PYTHON" -m venv .venv-maxtext
.venv-maxtext/bin/pip install --upgrade pip
# The wheel declares its dependencies only under accelerator extras (cuda12, tpu); it ships
# the set that runs anywhere without Google Cloud clients (DECOUPLE_GCLOUD=TRUE) as a file.
.venv-maxtext/bin/pip install "maxtext==0.2.5"
SITE=$(.venv-maxtext/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
.venv-maxtext/bin/pip install -r "$SITE/dependencies/requirements/generated_requirements/decoupled-requirements.txt"
.venv-maxtext/bin/python -c "import maxtext, jax; print('maxtext ready, jax', jax.__version__)"
