#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60), one after the other, one
# libFuzzer job each (-jobs=1), then prints a table: target, seconds, executions, exec/s,
# coverage, corpus, crashes. Exits 1 when a target crashed (reproducers in fuzz/artifacts/).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]
#
# Needs the nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz when
# missing. Each target's corpus grows in fuzz/work/<target>/corpus (not committed), seeded from
# fuzz/corpus/<target>/. PROXIM_FUZZ_TARGET_DIR sets the build directory (default fuzz/target).
# PROXIM_FUZZ_SANITIZER (default none) picks cargo-fuzz's sanitizer: the fuzzed crates forbid
# unsafe code, and AddressSanitizer made the targets 5-7 times slower here; `address` brings it
# back (cargo-fuzz's own default).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=${1:-60}
[[ $seconds =~ ^[0-9]+$ ]] || { echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]" >&2; exit 2; }

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "cargo-fuzz needs the nightly toolchain: rustup toolchain install nightly" >&2
    exit 2
fi
if ! command -v cargo-fuzz >/dev/null; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

target_dir=${PROXIM_FUZZ_TARGET_DIR:-$root/fuzz/target}
sanitizer=${PROXIM_FUZZ_SANITIZER:-none}
fuzz=(cargo +nightly fuzz)
build=(--fuzz-dir "$root/fuzz" --target-dir "$target_dir" --sanitizer "$sanitizer")
echo "== building the fuzz targets (nightly, sanitizer: $sanitizer)"
"${fuzz[@]}" build "${build[@]}"

rows=()
crashed=0
for target in $("${fuzz[@]}" list --fuzz-dir "$root/fuzz"); do
    work=$root/fuzz/work/$target
    artifacts=$root/fuzz/artifacts/$target
    mkdir -p "$work/corpus" "$artifacts"
    stamp=$work/started
    touch "$stamp"
    dict=()
    [ -f "$root/fuzz/dict/$target.dict" ] && dict=("-dict=$root/fuzz/dict/$target.dict")
    echo "== $target: ${seconds} s"
    # -jobs=1 runs one worker whose log libFuzzer writes to fuzz-0.log in the current directory.
    rc=0
    (cd "$work" && "${fuzz[@]}" run "${build[@]}" "$target" \
        "$work/corpus" "$root/fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -jobs=1 -print_final_stats=1 "${dict[@]}") \
        >"$work/run.log" 2>&1 || rc=$?
    log=$work/run.log
    [ -f "$work/fuzz-0.log" ] && log=$work/fuzz-0.log
    stat() { awk -v key="stat::$1:" '$1 == key { print $2 }' "$log" | tail -1; }
    runs=$(stat number_of_executed_units)
    rate=$(stat average_exec_per_sec)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
    crashes=$(find "$artifacts" -type f -newer "$stamp" | wc -l)
    if [ "$crashes" -gt 0 ] || [ "$rc" -ne 0 ]; then
        crashed=1
        echo "   $target: exit $rc, $crashes new artifact(s) in fuzz/artifacts/$target; log: $log"
        grep -m3 -E 'panicked|invariant violated|ERROR: ' "$log" | sed 's/^/   /' || true
    fi
    rows+=("$target $seconds ${runs:-?} ${rate:-?} ${cov:-?} ${corp:-?} $crashes")
done

echo
printf '%-16s %8s %12s %8s %6s %14s %8s\n' target seconds executions exec/s cov corpus crashes
for row in "${rows[@]}"; do
    # shellcheck disable=SC2086
    printf '%-16s %8s %12s %8s %6s %14s %8s\n' $row
done
echo "(corpus: inputs/bytes libFuzzer kept in memory; on disk in fuzz/work/<target>/corpus)"
exit "$crashed"
