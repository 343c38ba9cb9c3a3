#!/usr/bin/env bash
# The suite's kill/resume tests, ROUNDS times in a row, beside BUSY processes that each keep a core
# busy: a kill timed by the clock would fail here sooner or later; one at a point the test controls
# (nas/stops.py, tests/ray_cluster.py) passes every round whatever the load.
#
#   bash benchmarks/kill_tests_under_load.sh [ROUNDS=10] [BUSY=2]
#
# Prints one line per round (passed / failed, seconds, load average) and a last line with the
# count; exits non-zero if any round failed. Run from the repository root in its .venv; a
# throwaway PostgreSQL server is started as .ci/run starts one (its tests skip where none can).
set -uo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}
busy=${2:-2}

tests=(
    tests/test_resume.py
    tests/test_cli.py::test_temp_files_of_killed_writes_are_cleaned
    tests/test_cli.py::test_a_second_process_on_the_same_run_dir_is_refused
    tests/test_postgres_storage.py::test_four_drivers_on_one_fresh_database
    tests/test_postgres_storage.py::test_a_killed_driver_resumes_from_the_database
    tests/test_ray_executor.py::test_killed_actor_loses_no_candidate
    tests/test_ray_executor.py::test_stopping_early_then_losing_every_actor
    tests/test_cluster_search.py::test_a_worker_node_lost_mid_search_loses_and_duplicates_nothing
    tests/test_tune.py::test_killed_driver_resumes_and_retrains_no_finished_trial
)

pg_dir=$(mktemp -d /tmp/metaprune-pg-XXXXXX)
hogs=()
cleanup() {
    for pid in "${hogs[@]}"; do kill "$pid" 2>/dev/null; done
    python3 -m tests.postgres_server stop "$pg_dir" >/dev/null 2>&1 || true
    rm -rf "$pg_dir"
}
trap cleanup EXIT
if url=$(python3 -m tests.postgres_server start "$pg_dir"); then
    export METAPRUNE_TEST_POSTGRES_URL="$url"
fi
for _ in $(seq "$busy"); do
    python3 -c "while True: pass" &
    hogs+=($!)
done

failed=0
for round in $(seq "$rounds"); do
    start=$(date +%s)
    log=$(mktemp /tmp/kill-tests-XXXXXX.log)
    # -n 0: one process, as these tests run on the `ray` worker of the suite
    if python -m pytest -q -n 0 -p no:cacheprovider "${tests[@]}" >"$log" 2>&1; then
        outcome=passed
    else
        outcome="FAILED (log: $log)"
        failed=$((failed + 1))
    fi
    counts=$(grep -E "[0-9]+ (passed|failed)" "$log" | tail -1)
    [ "$outcome" = passed ] && rm -f "$log"
    echo "round $round/$rounds: $outcome in $(($(date +%s) - start)) s, load average $(cut -d' ' -f1-3 /proc/loadavg); pytest: ${counts}"
done
echo "$((rounds - failed))/$rounds rounds passed, beside $busy busy process(es)"
[ "$failed" = 0 ]
