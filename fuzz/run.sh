#!/usr/bin/env bash
# Fuzzes every ringcast-codec target (or those named as arguments) for FUZZ_SECONDS
# seconds each (default 600), one after another. Exits non-zero if any target crashed
# (or failed to build); the crashing input is left in fuzz/artifacts/TARGET/.
#
#   fuzz/run.sh                          # all targets, 10 minutes each
#   FUZZ_SECONDS=60 fuzz/run.sh frame_parser
#   FUZZ_SANITIZER=none fuzz/run.sh      # without AddressSanitizer (faster, fewer checks)
#
# Uses cargo-fuzz (installed on first use) on the stable toolchain with RUSTC_BOOTSTRAP=1
# for the -Z sanitizer flags. If the AddressSanitizer build fails, it falls back to `-s none`.
set -uo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-600}
sanitizer=${FUZZ_SANITIZER:-address}
all_targets=(frame_parser message_assembler handshake_parser utf8_soundness connection_machine)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")
export RUSTC_BOOTSTRAP=1

# Longest input per target: the handshake target may exceed the 8 KiB head limit.
max_len() {
    case $1 in
        handshake_parser) echo 10240 ;;
        *) echo 4096 ;;
    esac
}

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked || exit 2
fi

python3 seeds.py corpus || exit 2
mkdir -p artifacts/logs

failed=()
summary=()
for target in "${targets[@]}"; do
    s=$sanitizer
    if ! cargo fuzz build -s "$s" "$target"; then
        if [ "$s" = none ]; then
            failed+=("$target (build)")
            continue
        fi
        echo "warning: the $s build of $target failed; retrying with -s none" >&2
        s=none
        if ! cargo fuzz build -s none "$target"; then
            failed+=("$target (build)")
            continue
        fi
    fi
    log=artifacts/logs/$target.log
    echo "== $target: ${seconds}s, sanitizer $s, log $log" >&2
    start=$(date +%s)
    cargo fuzz run -s "$s" "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len="$(max_len "$target")" -timeout=10 -rss_limit_mb=4096 \
        -print_final_stats=1 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    wall=$(($(date +%s) - start))
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    corpus_files=$(find "corpus/$target" -type f | wc -l)
    summary+=("$target: status $status, wall ${wall}s, execs ${execs:-?}, corpus files $corpus_files | ${done_line:-no DONE line}")
    if [ "$status" -ne 0 ]; then
        failed+=("$target")
        echo "!! $target failed (exit $status). Crash input(s):" >&2
        ls -1 "artifacts/$target"/crash-* "artifacts/$target"/leak-* "artifacts/$target"/timeout-* \
            "artifacts/$target"/oom-* 2>/dev/null >&2
        echo "   minimize: RUSTC_BOOTSTRAP=1 cargo fuzz tmin $target artifacts/$target/<file>" >&2
    fi
done

echo
echo "== fuzz summary (${seconds}s per target)"
for line in "${summary[@]}"; do echo "$line"; done
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "no crashes"
