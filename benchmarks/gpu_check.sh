#!/usr/bin/env bash
# The GPU check: the first thing a session lent a GPU runs. Every CUDA path of metaprune once, on
# the bundled digits with small epochs, in under 6 minutes on one GPU; one line per path,
#     ok|failed <path> <figure>
# and it keeps going after a failure (exit status: the number of failed paths). Paths: setup
# (imports, GPU, bf16 support), train-base.amp and train-pruningnet.amp (bf16 autocast on CUDA),
# search.inprocess (CUDA scoring), proxy.cuda-vs-cpu (one PruningNet checkpoint, the same
# configurations scored on CUDA and on the CPU: the largest difference of proxy top-1),
# search.ray-1-actor (--executor ray --workers 1: one actor per GPU), latency-table (the per-layer
# table measured on CUDA, checked against whole subnets), finetune.tune-top2 (Ray Tune trials on
# the GPU, distilled), quantize and export of the GPU-trained winner, tests.distill-devices
# (tests/test_distill_devices.py, whose CUDA cases run only where a GPU is).
#
# Here (a machine with pip and a registry), once, from the repository root:
#     . .venv/bin/activate && bash benchmarks/gpu_check.sh --fetch
# downloads into .whl/ (ignored through .git/info/exclude) the CPython 3.12 wheels the GPU image
# lacks: ray (slimmed: no Java jars, RLlib, Serve, LLM, source maps), its jsonschema and pydantic
# stacks, optuna with alembic, sqlalchemy, mako and colorlog, thop, typing-extensions and packaging,
# each at the version installed here; it prints their sizes against the device tool's 64 MiB limit.
# Then, on the GPU machine, through the device tool:
#     run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=420)
# installs them with `pip install --no-index --target /tmp/site`, runs the checks and leaves the
# lines and every command's log in $OUT/gpu_check/ (gpu_check.txt, <path>.log).
#
# CPU self-test (proves the script end to end without a GPU; slower, so a larger budget):
#     GPU_CHECK_DEVICE=cpu GPU_CHECK_BUDGET_S=3000 bash benchmarks/gpu_check.sh
# Settings (environment): GPU_CHECK_DEVICE (cuda | cpu), GPU_CHECK_BUDGET_S (seconds for all paths,
# default 330; a path past it is reported failed, skipped), GPU_CHECK_WORK (run directories, default
# /tmp/gpu_check, emptied first), GPU_CHECK_WHEELS (default .whl), GPU_CHECK_PYTHON_VERSION (for
# --fetch, default 3.12).
set -u
cd "$(dirname "$0")/.."
wheels="${GPU_CHECK_WHEELS:-.whl}"

if [ "${1:-}" = "--fetch" ]; then
    exec python3 benchmarks/gpu_check.py fetch --wheels "$wheels"
fi

if compgen -G "$wheels/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl \
        || { echo "failed setup pip install of $wheels/*.whl into /tmp/site"; exit 100; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
exec python3 benchmarks/gpu_check.py run
