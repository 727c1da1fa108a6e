#!/usr/bin/env bash
# A fuzzing campaign: builds the cargo-fuzz targets and runs each for a fixed time, one
# after the other, recording libFuzzer's final figures in fuzz/results/<target>.txt.
#
#   fuzz/run.sh [seconds-per-target] [targets...]   # default 300 s, every target
#   fuzz/run.sh --seeds [targets...]                # rewrite fuzz/corpus/<target>/ from
#                                                   # the targets' own seed writers
#
# Each run starts from the committed seeds (fuzz/corpus/<target>/, read only) and the
# corpus earlier runs grew (fuzz/work/<target>/, not committed); a crash stops that
# target's run and leaves its input in fuzz/artifacts/<target>/ (reproduce with
# `<binary> fuzz/artifacts/<target>/crash-...`, shown in the results file).
#
# Environment: CARGO_TARGET_DIR (default fuzz/target); FUZZ_SANITIZER (cargo fuzz's
# --sanitizer, default address: its allocator also catches single huge allocations);
# FUZZ_ARGS (extra libFuzzer flags, e.g. -jobs/-workers or -dict=...); FUZZ_NO_BUILD=1
# runs the binaries already built (a campaign resumed while sources changed). The main
# workspace's RUSTFLAGS, RUSTC_WORKSPACE_WRAPPER and CLIPPY_ARGS are unset: cargo fuzz
# sets its own flags, and clippy is not the compiler for these builds. On a shared
# machine run it under `nice -n 10`.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
unset RUSTFLAGS RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/fuzz/target}
sanitizer=${FUZZ_SANITIZER:-address}
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin_dir=$CARGO_TARGET_DIR/$triple/release

seeds_only=0
seconds=300
if [[ ${1:-} == --seeds ]]; then
    seeds_only=1
    shift
elif [[ ${1:-} =~ ^[0-9]+$ ]]; then
    seconds=$1
    shift
fi
if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi

build() {
    [[ -n ${FUZZ_NO_BUILD:-} ]] && return 0
    cargo +nightly fuzz build --fuzz-dir fuzz --sanitizer "$sanitizer" "$1"
}

if [[ $seeds_only == 1 ]]; then
    for t in "${targets[@]}"; do
        build "$t"
        # A target without a seed writer ignores the variable; -runs=0 makes it exit.
        LAMINA_FUZZ_WRITE_SEEDS=fuzz/corpus/$t "$bin_dir/$t" -runs=0 >/dev/null 2>&1 || true
        echo "$t: $(find "fuzz/corpus/$t" -type f 2>/dev/null | wc -l) seeds"
    done
    exit 0
fi

mkdir -p fuzz/results
status=0
for t in "${targets[@]}"; do
    build "$t"
    work=fuzz/work/$t
    artifacts=fuzz/artifacts/$t
    mkdir -p "$work" "$artifacts" "fuzz/corpus/$t"
    log=fuzz/results/$t.log
    old=$(find "$artifacts" -type f | sort)
    # shellcheck disable=SC2086  # FUZZ_ARGS is a list of flags
    cmd=("$bin_dir/$t" "$work" "fuzz/corpus/$t" -max_total_time="$seconds" -timeout=10
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts/" ${FUZZ_ARGS:-})
    echo "== $t: ${seconds} s"
    set +e
    "${cmd[@]}" >"$log" 2>&1
    rc=$?
    set -e
    new=$(comm -13 <(echo "$old") <(find "$artifacts" -type f | sort) | sed '/^$/d')
    stats=$(grep -E '^#[0-9]+' "$log" | grep 'cov:' | tail -n 1 || true)
    {
        echo "target: $t"
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "commit: $(git describe --always --dirty 2>/dev/null || echo unknown)"
        echo "seconds: $seconds"
        echo "sanitizer: $sanitizer"
        echo "exit: $rc"
        echo "executions: $(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
        echo "executions_per_second: $(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
        echo "peak_rss_mb: $(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n 1)"
        echo "final: $stats"
        echo "seed_corpus: $(find "fuzz/corpus/$t" -type f | wc -l) files"
        echo "grown_corpus: $(find "$work" -type f | wc -l) files"
        echo "crashes: $(echo -n "$new" | grep -c . || true)"
        [[ -n $new ]] && echo "$new" | sed 's/^/artifact: /'
        echo "command: fuzz/run.sh $seconds $t"
    } >"fuzz/results/$t.txt"
    cat "fuzz/results/$t.txt"
    if [[ $rc != 0 ]]; then
        status=1
        grep -E 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY' "$log" | head -n 5 || true
    fi
done
exit $status
