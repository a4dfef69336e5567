#!/usr/bin/env bash
# pull-bench.sh: how fast `modelcrypt pull` delivers a model into a tmpfs, next to the
# skopeo + tar pipeline it replaces. This is a benchmark, not a test: it prints numbers and
# fails only if a tool fails or the delivered weights have the wrong hash.
#
# What it does, in one run (as root, Debian 12):
#   1. installs what is missing (skopeo, docker-registry, GNU time, curl, openssl, python3);
#   2. makes a synthetic model shaped like Qwen/Qwen3-0.6B (a 1,503,300,328-byte
#      model.safetensors of incompressible bytes, plus config/tokenizer/doc files with the
#      real sizes) in $BENCH_WORKDIR/model, or reuses it if the sizes are right;
#   3. starts a throwaway registry (CNCF distribution) on a free 127.0.0.1 port;
#   4. pushes the model with `modelcrypt pack --tar --reproducible` (one tar layer per file);
#   5. mounts a tmpfs and, RUNS times in alternating order, times
#        ours:     modelcrypt pull REF --to TMPFS/ours/qwen3
#        baseline: skopeo copy REF dir:TMPFS/skopeo-dir, then tar -xf every layer blob
#      after checking once that both deliver the right bytes;
#   6. measures one core's SHA-256 rate with `openssl speed`, the per-file ceiling of any
#      verifying pull (the layer digest is one sequential SHA-256 per file);
#   7. prints a table and `RESULT key=value` lines (grep '^RESULT' for scripts).
#
# How to read it: MB/s is 10^6 bytes of the whole model (all files) per wall-clock second,
# median over the runs. "of SHA-256" is our median rate divided by the single-core SHA-256
# rate: near 1.0 means we are at the hashing ceiling for a single-file model. The baseline's
# dir: copy goes to the same tmpfs here (the real seed pipeline wrote it to disk), which
# favours the baseline. Everything is in RAM (registry blobs sit in the page cache), so the
# numbers measure CPU and memory bandwidth, not disk or network; other load on the machine
# (see loadavg in the output) makes them slower and noisier.
#
# Knobs (environment):
#   RUNS=5                          timed rounds (each round runs both tools)
#   BENCH_WORKDIR=/var/tmp/modelcrypt-bench   model, registry storage, logs, tmpfs mount point
#   MODELCRYPT=<repo>/target/release/modelcrypt
#   KEEP=1                          keep the model, registry storage and logs afterwards
#   TMPFS_SIZE=8g                   size of the tmpfs for the destinations
#
# Flags of modelcrypt it relies on: pack --tar --reproducible --plain-http;
# pull --to DIR --plain-http --no-progress.

set -euo pipefail
export LC_ALL=C # a dot as the decimal separator in $EPOCHREALTIME, awk and printf

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
MC=${MODELCRYPT:-$REPO_ROOT/target/release/modelcrypt}
RUNS=${RUNS:-5}
WORK=${BENCH_WORKDIR:-/var/tmp/modelcrypt-bench}
KEEP=${KEEP:-0}
TMPFS_SIZE=${TMPFS_SIZE:-8g}

MODEL_DIR=$WORK/model/qwen3-0.6b
REG_DIR=$WORK/registry
LOG_DIR=$WORK/logs
TMPFS=$WORK/tmpfs
REG_PID=""
PY=python3

# Qwen/Qwen3-0.6B file sizes (shared/docs/modelpack.md §4).
QWEN3_WEIGHTS=1503300328

log() { printf '[pull-bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------- setup

cleanup() {
    local rc=$?
    set +e
    if [[ -n $REG_PID ]] && kill -0 "$REG_PID" 2>/dev/null; then
        kill "$REG_PID" && wait "$REG_PID" 2>/dev/null
    fi
    if mountpoint -q "$TMPFS" 2>/dev/null; then
        umount "$TMPFS" || log "warning: could not unmount $TMPFS"
    fi
    if [[ $KEEP != 1 ]]; then
        # Only what this script creates, in case BENCH_WORKDIR holds other things.
        rm -rf "$WORK/model" "$REG_DIR" "$LOG_DIR" "$WORK/registry.yml"
        rmdir "$TMPFS" "$WORK" 2>/dev/null
    else
        log "kept $WORK (KEEP=1)"
    fi
    exit "$rc"
}

install_prereqs() {
    local -a missing=()
    command -v skopeo >/dev/null || missing+=(skopeo)
    [[ -x /usr/bin/docker-registry ]] || missing+=(docker-registry)
    [[ -x /usr/bin/time ]] || missing+=(time)
    command -v curl >/dev/null || missing+=(curl)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v python3 >/dev/null || missing+=(python3)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # The distribution's python starts faster than a pyenv shim (its start-up is in the
    # baseline's timing).
    if [[ -x /usr/bin/python3 ]]; then PY=/usr/bin/python3; fi
}

check_modelcrypt() {
    if [[ ! -x $MC ]]; then
        log "modelcrypt binary not found at $MC"
        log "build it with:  (cd $REPO_ROOT && cargo build --release)"
        log "or point MODELCRYPT=/path/to/modelcrypt at one"
        exit 1
    fi
    local flag help
    help=$("$MC" pack --help 2>&1) || die "'$MC pack --help' failed: $help"
    for flag in --tar --reproducible --plain-http; do
        [[ $help == *"$flag"* ]] || die "'$MC pack' has no $flag flag"
    done
    help=$("$MC" pull --help 2>&1) || die "'$MC pull --help' failed: $help"
    for flag in --to --plain-http --no-progress; do
        [[ $help == *"$flag"* ]] || die "'$MC pull' has no $flag flag"
    done
}

# --------------------------------------------------------------------- the model

# random_file PATH SIZE: SIZE incompressible bytes (AES-256-CTR keystream; CTR adds no
# padding, so the output is exactly as long as the input). The IV comes from the file name so
# that shards differ and the registry cannot deduplicate them.
random_file() {
    local path=$1 size=$2 iv
    iv=$(printf '%s' "$(basename "$path")" | openssl dgst -sha256 -r | cut -c1-32)
    head -c "$size" /dev/zero |
        openssl enc -aes-256-ctr -K "$(printf '%064d' 0)" -iv "$iv" >"$path.part"
    mv "$path.part" "$path"
}

# padded_file PATH SIZE PREFIX SUFFIX: PREFIX, filler 'a's, SUFFIX; SIZE bytes in total.
padded_file() {
    local path=$1 size=$2 prefix=$3 suffix=$4
    local fill=$((size - ${#prefix} - ${#suffix}))
    { printf '%s' "$prefix"; head -c "$fill" /dev/zero | tr '\0' a; printf '%s' "$suffix"; } >"$path"
}

# ensure PATH SIZE KIND...: (re)make PATH with KIND unless it already has SIZE bytes.
ensure() {
    local path=$1 size=$2
    shift 2
    if [[ -f $path && $(stat -c %s "$path") == "$size" ]]; then return; fi
    log "making $(basename "$path") ($size bytes)"
    "$@" "$path" "$size"
    [[ $(stat -c %s "$path") == "$size" ]] || die "$path does not have $size bytes"
}

json_pad() { padded_file "$1" "$2" '{"bench_padding":"' $'"}\n'; }
text_pad() { padded_file "$1" "$2" "$3" $'\n'; }
merges_file() { text_pad "$1" "$2" $'#version: 0.2\n'; }
license_file() { text_pad "$1" "$2" $'Apache License\nVersion 2.0, January 2004\n'; }

write_configs() {
    local dir=$1
    cat >"$dir/config.json" <<'EOF'
{
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 1024,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "max_position_embeddings": 40960,
  "max_window_layers": 28,
  "model_type": "qwen3",
  "num_attention_heads": 16,
  "num_hidden_layers": 28,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
}
EOF
    cat >"$dir/generation_config.json" <<'EOF'
{
  "bos_token_id": 151643,
  "do_sample": true,
  "eos_token_id": [151645, 151643],
  "pad_token_id": 151643,
  "temperature": 0.6,
  "top_k": 20,
  "top_p": 0.95,
  "transformers_version": "4.51.0"
}
EOF
    printf '# Synthetic Qwen3-0.6B-shaped model\n\nRandom weights for benchmarking; not a model.\n' \
        >"$dir/README.md"
}

# write_index DIR SHARD...: model.safetensors.index.json mapping one fake tensor per shard.
write_index() {
    local dir=$1 total=0 shard sep=""
    shift
    for shard in "$@"; do total=$((total + $(stat -c %s "$dir/$shard"))); done
    {
        printf '{\n  "metadata": {"total_size": %d},\n  "weight_map": {' "$total"
        for shard in "$@"; do
            printf '%s\n    "tensor.%s": "%s"' "$sep" "${shard%%.*}" "$shard"
            sep=,
        done
        printf '\n  }\n}\n'
    } >"$dir/model.safetensors.index.json"
}

# make_model DIR SHARD_SIZE...: one size gives model.safetensors; N sizes give
# model-0000i-of-0000N.safetensors plus an index. Existing files of the right size are kept.
make_model() {
    local dir=$1
    shift
    local n=$# i=0 size
    local -a shards=()
    mkdir -p "$dir"
    for size in "$@"; do
        i=$((i + 1))
        if ((n == 1)); then shards+=(model.safetensors)
        else shards+=("$(printf 'model-%05d-of-%05d.safetensors' "$i" "$n")"); fi
        ensure "$dir/${shards[-1]}" "$size" random_file
    done
    if ((n > 1)); then write_index "$dir" "${shards[@]}"; fi
    write_configs "$dir"
    ensure "$dir/tokenizer.json" 11422654 json_pad
    ensure "$dir/tokenizer_config.json" 9732 json_pad
    ensure "$dir/vocab.json" 2776833 json_pad
    ensure "$dir/merges.txt" 1671853 merges_file
    ensure "$dir/LICENSE" 11343 license_file
}

dir_bytes() { find "$1" -type f -printf '%s\n' | awk '{s += $1} END {printf "%d\n", s}'; }

# ------------------------------------------------------------------ the registry

free_port() {
    "$PY" -I -S -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_registry() {
    local port=$1 deadline
    mkdir -p "$REG_DIR" "$LOG_DIR"
    cat >"$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $REG_DIR
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
EOF
    /usr/bin/docker-registry serve "$WORK/registry.yml" >"$LOG_DIR/registry.log" 2>&1 &
    REG_PID=$!
    deadline=$((SECONDS + 30))
    until curl -sf -o /dev/null "http://127.0.0.1:$port/v2/"; do
        kill -0 "$REG_PID" 2>/dev/null || { cat "$LOG_DIR/registry.log" >&2; die "registry exited"; }
        ((SECONDS < deadline)) || die "registry not ready on 127.0.0.1:$port after 30 s"
        sleep 0.1
    done
    log "registry up on 127.0.0.1:$port (pid $REG_PID)"
}

# ----------------------------------------------------------------------- timing

now_us() { echo "${EPOCHREALTIME/./}"; }
us_to_s() { awk -v us="$1" 'BEGIN {printf "%.3f", us / 1e6}'; }

# run_logged LOG CMD...: run CMD with its output in LOG; on failure show LOG and exit.
run_logged() {
    local logf=$1
    shift
    "$@" >"$logf" 2>&1 || { tail -n 30 "$logf" >&2; die "failed ($logf): $*"; }
}

# time_ours REF DEST LOG [PULL_ARG...]: sets RUN_S (wall seconds) and RUN_RSS_KIB (peak RSS
# of the pull). Extra arguments go to `modelcrypt pull` (e.g. --decryption-key KEY).
time_ours() {
    local ref=$1 dest=$2 logf=$3 t0 t1
    shift 3
    rm -rf "$dest"
    mkdir -p "$(dirname "$dest")"
    t0=$(now_us)
    run_logged "$logf" /usr/bin/time -f %M -o "$logf.rss" \
        "$MC" pull "$ref" --to "$dest" --plain-http --no-progress "$@"
    t1=$(now_us)
    RUN_S=$(us_to_s $((t1 - t0)))
    RUN_RSS_KIB=$(tail -n 1 "$logf.rss")
}

# layer_blobs MANIFEST: the layer digests' hex parts (skopeo's dir: names blobs that way).
layer_blobs() {
    "$PY" -I -S -c 'import json, sys
for layer in json.load(open(sys.argv[1]))["layers"]:
    print(layer["digest"].split(":", 1)[1])' "$1"
}

# time_baseline REF OUT LOG [SKOPEO_COPY_ARG...]: skopeo copy to dir:, then untar every layer
# into OUT. Sets RUN_S and RUN_RSS_KIB (peak RSS of skopeo, for information). Extra arguments
# go to `skopeo copy` (e.g. --decryption-key KEY).
time_baseline() {
    local ref=$1 out=$2 logf=$3 stage=$TMPFS/skopeo-dir t0 t1 blobs blob
    shift 3
    rm -rf "$stage" "$out"
    mkdir -p "$out"
    t0=$(now_us)
    run_logged "$logf" /usr/bin/time -f %M -o "$logf.rss" \
        skopeo --insecure-policy copy --src-tls-verify=false "$@" "$ref" "dir:$stage"
    blobs=$(layer_blobs "$stage/manifest.json")
    for blob in $blobs; do
        tar -xf "$stage/$blob" -C "$out"
    done
    t1=$(now_us)
    RUN_S=$(us_to_s $((t1 - t0)))
    RUN_RSS_KIB=$(tail -n 1 "$logf.rss")
}

clear_tmpfs() { find "$TMPFS" -mindepth 1 -delete; }

# check_delivery SRC OUT WHO: every source file is in OUT with the same bytes (sha256 for
# *.safetensors, cmp for the rest); extra files (a completion marker, say) are only listed.
check_delivery() {
    local src=$1 out=$2 who=$3 f want got
    while IFS= read -r f; do
        [[ -f $out/$f ]] || die "$who: $f missing in $out"
        if [[ $f == *.safetensors ]]; then
            want=$(openssl dgst -sha256 -r "$src/$f" | cut -d' ' -f1)
            got=$(openssl dgst -sha256 -r "$out/$f" | cut -d' ' -f1)
            [[ $want == "$got" ]] || die "$who: sha256 of $f is $got, the source's is $want"
        else
            cmp -s "$src/$f" "$out/$f" || die "$who: $f differs from the source"
        fi
    done < <(cd "$src" && find . -type f -printf '%P\n' | sort)
    local extra
    extra=$(comm -13 <(cd "$src" && find . -type f -printf '%P\n' | sort) \
        <(cd "$out" && find . -type f -printf '%P\n' | sort) | tr '\n' ' ')
    log "$who: delivery verified${extra:+ (extra files: $extra)}"
}

# sha256_rate: one core's SHA-256 in MB/s (10^6 B/s). openssl prints 1000s of bytes per
# second with a 'k' suffix, measured in CPU time.
sha256_rate() {
    openssl speed -evp sha256 -bytes 1048576 -seconds 3 2>/dev/null |
        awk 'tolower($1) == "sha256" && $NF ~ /k$/ {sub(/k$/, "", $NF); r = $NF / 1000}
             END {if (r == "") exit 1; printf "%.1f\n", r}'
}

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1}
    END {if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN {printf "%.1f", b / s / 1e6}'; }

# ------------------------------------------------------------------------- main

main() {
    [[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, not '$RUNS'"
    ((EUID == 0)) || die "run as root (apt-get, mount)"
    install_prereqs
    check_modelcrypt
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    mkdir -p "$WORK" "$LOG_DIR" "$TMPFS"

    log "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    local load_start
    load_start=$(cut -d' ' -f1 /proc/loadavg)

    make_model "$MODEL_DIR" "$QWEN3_WEIGHTS"
    local model_bytes
    model_bytes=$(dir_bytes "$MODEL_DIR")

    local port ref t0
    port=$(free_port)
    start_registry "$port"
    ref=docker://127.0.0.1:$port/bench/qwen3:tar

    log "pushing with modelcrypt pack --tar --reproducible"
    t0=$(now_us)
    run_logged "$LOG_DIR/pack.log" "$MC" pack "$MODEL_DIR" "$ref" --tar --reproducible --plain-http
    local pack_s
    pack_s=$(us_to_s $(($(now_us) - t0)))

    if mountpoint -q "$TMPFS"; then umount "$TMPFS"; fi
    mount -t tmpfs -o "size=$TMPFS_SIZE,mode=0700" modelcrypt-bench "$TMPFS"

    # Untimed first pulls: check the bytes, and warm the page cache and tmpfs pages.
    time_ours "$ref" "$TMPFS/ours/qwen3" "$LOG_DIR/ours-check.log"
    check_delivery "$MODEL_DIR" "$TMPFS/ours/qwen3" ours
    clear_tmpfs
    time_baseline "$ref" "$TMPFS/baseline-out" "$LOG_DIR/baseline-check.log"
    check_delivery "$MODEL_DIR" "$TMPFS/baseline-out" baseline
    clear_tmpfs

    local -a ours=() base=() order=()
    local i rss_max=0 skopeo_rss_max=0 who
    for ((i = 1; i <= RUNS; i++)); do
        if ((i % 2)); then order+=("ours,baseline"); else order+=("baseline,ours"); fi
        for who in ${order[-1]//,/ }; do
            if [[ $who == ours ]]; then
                time_ours "$ref" "$TMPFS/ours/qwen3" "$LOG_DIR/ours-$i.log"
                ours+=("$RUN_S")
                if ((RUN_RSS_KIB > rss_max)); then rss_max=$RUN_RSS_KIB; fi
            else
                time_baseline "$ref" "$TMPFS/baseline-out" "$LOG_DIR/baseline-$i.log"
                base+=("$RUN_S")
                if ((RUN_RSS_KIB > skopeo_rss_max)); then skopeo_rss_max=$RUN_RSS_KIB; fi
            fi
            log "run $i $who: $RUN_S s"
            clear_tmpfs
        done
    done

    log "measuring single-core SHA-256 (openssl speed, 3 s)"
    local sha_mbps
    sha_mbps=$(sha256_rate) || die "could not parse openssl speed output"

    report "$model_bytes" "$pack_s" "$sha_mbps" "$rss_max" "$skopeo_rss_max" "$load_start"
}

# report MODEL_BYTES PACK_S SHA_MBPS RSS_KIB SKOPEO_RSS_KIB LOAD_START (runs in ours/base/order)
report() {
    local model_bytes=$1 pack_s=$2 sha_mbps=$3 rss_kib=$4 skopeo_kib=$5 load_start=$6
    local om bm omb bmb ratio frac rss_mib skopeo_mib load_end i
    om=$(median "${ours[@]}")
    bm=$(median "${base[@]}")
    omb=$(mbps "$model_bytes" "$om")
    bmb=$(mbps "$model_bytes" "$bm")
    ratio=$(awk -v a="$omb" -v b="$bmb" 'BEGIN {printf "%.2f", a / b}')
    frac=$(awk -v a="$omb" -v b="$sha_mbps" 'BEGIN {printf "%.2f", a / b}')
    rss_mib=$(awk -v k="$rss_kib" 'BEGIN {printf "%.1f", k / 1024}')
    skopeo_mib=$(awk -v k="$skopeo_kib" 'BEGIN {printf "%.1f", k / 1024}')
    load_end=$(cut -d' ' -f1 /proc/loadavg)

    echo
    echo "modelcrypt pull benchmark: Qwen3-0.6B-shaped model, tar layers, loopback registry -> tmpfs"
    echo "machine: nproc=$(nproc), $(openssl version | cut -d' ' -f1-2), loadavg ${load_start} at start, ${load_end} at end"
    echo "model: $model_bytes bytes in $(find "$MODEL_DIR" -type f | wc -l) files (weights $QWEN3_WEIGHTS); pack took $pack_s s"
    echo "note: the baseline's dir: copy also goes to tmpfs (the seed pipeline used disk), which favours it"
    echo
    printf '%-4s %-16s %10s %12s\n' run order ours_s baseline_s
    for ((i = 0; i < RUNS; i++)); do
        printf '%-4s %-16s %10s %12s\n' "$((i + 1))" "${order[i]}" "${ours[i]}" "${base[i]}"
    done
    echo
    printf '%-28s %10s s  %8s MB/s\n' "median ours" "$om" "$omb"
    printf '%-28s %10s s  %8s MB/s\n' "median skopeo+tar" "$bm" "$bmb"
    printf '%-28s %10sx\n' "speed ours/baseline" "$ratio"
    printf '%-28s %10s MB/s; ours = %s of it\n' "SHA-256, one core" "$sha_mbps" "$frac"
    printf '%-28s %10s MiB (skopeo: %s MiB)\n' "peak RSS ours (max of runs)" "$rss_mib" "$skopeo_mib"
    echo
    echo "RESULT nproc=$(nproc)"
    echo "RESULT loadavg_start=$load_start"
    echo "RESULT loadavg_end=$load_end"
    echo "RESULT model_bytes=$model_bytes"
    echo "RESULT weights_bytes=$QWEN3_WEIGHTS"
    echo "RESULT runs=$RUNS"
    echo "RESULT pack_s=$pack_s"
    for ((i = 0; i < RUNS; i++)); do
        echo "RESULT ours_run$((i + 1))_s=${ours[i]}"
        echo "RESULT baseline_run$((i + 1))_s=${base[i]}"
    done
    echo "RESULT ours_median_s=$om"
    echo "RESULT ours_median_mbps=$omb"
    echo "RESULT baseline_median_s=$bm"
    echo "RESULT baseline_median_mbps=$bmb"
    echo "RESULT speed_ratio_ours_over_baseline=$ratio"
    echo "RESULT sha256_single_core_mbps=$sha_mbps"
    echo "RESULT ours_fraction_of_sha256=$frac"
    echo "RESULT ours_peak_rss_mib=$rss_mib"
    echo "RESULT skopeo_peak_rss_mib=$skopeo_mib"
}

# Sourcing this file (e.g. from a variant benchmark) defines the functions without running.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi
