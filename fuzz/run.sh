#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a fixed time, one at a time, then prints per
# target the number of executions and whether it found a crash. Not run in CI.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS per target: the first argument, else $FUZZ_SECONDS, else 60. TARGETs: default all
# (`cargo fuzz list`). $FUZZ_ARGS is appended to every libFuzzer command line (e.g.
# FUZZ_ARGS=-max_len=65536). Needs a nightly toolchain and `cargo install cargo-fuzz`.
#
# New corpus entries go to fuzz/corpus/TARGET (ignored by git), crashes to
# fuzz/artifacts/TARGET, libFuzzer's output to fuzz/logs/TARGET.log. The committed seeds in
# fuzz/seeds/TARGET are read as a second corpus directory and never written. Reproduce a
# crash with `cargo +nightly fuzz run TARGET FILE`, minimize it with `cargo +nightly fuzz tmin
# TARGET FILE`.
set -uo pipefail

cd "$(dirname "$0")" || exit 1

seconds="${FUZZ_SECONDS:-60}"
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
    seconds=$1
    shift
fi
if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
read -r -a extra <<<"${FUZZ_ARGS:-}"

# The machine may be shared: one compiler job, one fuzzing process. Build once, then run the
# binaries themselves: `cargo fuzz run` would rebuild whenever a source file changed meanwhile.
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
if ! cargo +nightly fuzz build; then
    echo "run.sh: build failed" >&2
    exit 2
fi
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin_dir="target/$triple/release"
# What `cargo fuzz run` sets.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}"

mkdir -p logs
summary=()
failed=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t"
    log="logs/$t.log"
    before=$(find "artifacts/$t" -type f | wc -l)
    echo "== $t: ${seconds}s"
    start=$(date +%s)
    "$bin_dir/$t" -artifact_prefix="artifacts/$t/" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "${extra[@]}" "corpus/$t" "seeds/$t" >"$log" 2>&1
    status=$?
    elapsed=$(($(date +%s) - start))
    after=$(find "artifacts/$t" -type f | wc -l)
    # The final stats when libFuzzer ends normally; else the last `#N` status line.
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if [[ -z $execs ]]; then
        execs=$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#')
    fi
    if [[ $status -eq 0 && $after -eq $before ]]; then
        result="no crash"
    else
        failed=1
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        result="CRASH (exit $status) ${artifact:-see $log}"
    fi
    summary+=("$(printf '%-18s %6ss %14s  %s' "$t" "$elapsed" "${execs:-?}" "$result")")
done

echo
printf '%-18s %7s %14s  %s\n' target time executions result
printf '%s\n' "${summary[@]}"
exit "$failed"
