#!/usr/bin/env bash
# A long fuzzing campaign in the background: every target runs (at nice 19, JOBS at a
# time) in chunks of CHUNK wall seconds until it has used TARGET_CPU seconds of CPU in
# this campaign, so a busy machine only slows it down and the CPU-hours it reports are
# real. Touch fuzz/.pause to hold it between chunks (for benchmarks); remove it to go on.
#
#   fuzz/campaign.sh                                   # all targets, 1 CPU-hour each
#   TARGET_CPU=600 JOBS=1 fuzz/campaign.sh frame_parser
#
# Per chunk it appends "target chunk cpu_s execs cov ft corpus status" to
# fuzz/campaign.tsv; crashes stay in fuzz/artifacts/TARGET/ and stop that target.
# Afterwards: `fuzz/campaign.sh --minimize` shrinks each corpus with `cargo fuzz cmin`.
set -uo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1

target_cpu=${TARGET_CPU:-3600}
chunk=${CHUNK:-300}
jobs=${JOBS:-2}
sanitizer=${FUZZ_SANITIZER:-address}
all_targets=(frame_parser message_assembler handshake_parser utf8_soundness connection_machine)
bin_dir=target/x86_64-unknown-linux-gnu/release

max_len() {
    case $1 in
        handshake_parser) echo 10240 ;;
        *) echo 4096 ;;
    esac
}

if [ "${1:-}" = --minimize ]; then
    shift
    targets=("$@")
    [ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")
    for t in "${targets[@]}"; do
        before=$(find "corpus/$t" -type f | wc -l)
        cargo fuzz cmin -s "$sanitizer" "$t" "corpus/$t" -- -max_len="$(max_len "$t")" \
            >"artifacts/logs/$t.cmin.log" 2>&1
        echo "$t: corpus $before -> $(find "corpus/$t" -type f | wc -l) files"
    done
    exit 0
fi

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")
python3 seeds.py corpus || exit 2
mkdir -p artifacts/logs
[ -f campaign.tsv ] || printf 'target\tchunk\tcpu_s\texecs\tcov\tft\tcorpus\tstatus\n' >campaign.tsv

for t in "${targets[@]}"; do
    cargo fuzz build -s "$sanitizer" "$t" || { echo "build of $t failed" >&2; exit 2; }
done

# CPU seconds this campaign already spent on a target (from earlier chunks).
spent() {
    awk -v t="$1" -F'\t' '$1 == t { s += $3 } END { printf "%d", s }' campaign.tsv
}

run_target() {
    local t=$1 n=0 log
    while [ "$(spent "$t")" -lt "$target_cpu" ]; do
        while [ -e .pause ]; do sleep 5; done
        n=$((n + 1))
        log=artifacts/logs/$t.chunk.log
        /usr/bin/time -f '%U %S' -o "artifacts/logs/$t.time" \
            nice -n 19 "$bin_dir/$t" "corpus/$t" -artifact_prefix="artifacts/$t/" \
            -max_total_time="$chunk" -max_len="$(max_len "$t")" -timeout=10 \
            -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1
        local status=$?
        local cpu execs cov ft files
        cpu=$(awk '{ printf "%d", $1 + $2 }' "artifacts/logs/$t.time" 2>/dev/null)
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
        ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
        files=$(find "corpus/$t" -type f | wc -l)
        printf '%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$n" "${cpu:-0}" "${execs:-0}" \
            "${cov:-?}" "${ft:-?}" "$files" "$status" >>campaign.tsv
        if [ "$status" -ne 0 ]; then
            echo "!! $t exited $status; see $log and artifacts/$t/" >&2
            cp "$log" "artifacts/logs/$t.crash.log"
            return 1
        fi
    done
}

mkdir -p "${targets[@]/#/artifacts/}"
running=0
for t in "${targets[@]}"; do
    run_target "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n
        running=$((running - 1))
    fi
done
wait
echo "== campaign totals (CPU seconds, executions)"
awk -F'\t' 'NR > 1 { c[$1] += $3; e[$1] += $4 } END { for (t in c) printf "%s\t%d s\t%d execs\n", t, c[t], e[t] }' campaign.tsv
