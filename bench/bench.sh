#!/usr/bin/env bash
# bench.sh: how close `modelcrypt` comes to saturating the pipe, next to the skopeo + tar
# pipeline it replaces, in one run. A benchmark, not a test: it prints numbers and PASS/MISS
# against the targets, and fails only on a tool error or wrong bytes, never on a MISS.
#
# Usage (as root, Debian 12; installs skopeo, docker-registry, GNU time if missing):
#   bench/bench.sh [--markdown]
#   RUNS=1 QWEN_MB=64 SHARD_MB=64 bench/bench.sh     # a quick check with small models
#   SHAPES=slowlink bench/bench.sh                     # only the slow-link pulls (4-5 min)
#
# Shapes (synthetic, deterministic: the same sizes give the same bytes; made once and cached in
# $BENCH_WORKDIR/model, with their SHA-256 sums):
#   qwen3   "qwen3-0.6b": Qwen3-0.6B's files: a 1,503,300,328-byte model.safetensors (QWEN_MB
#           MiB if set) plus config, tokenizer and doc files with the real sizes (15.9 MB).
#   8g      "8g-4shards": four shards model-0000N-of-00004.safetensors of SHARD_MB MiB each
#           (default 2048: 8.6 GB in all), an index, and the same small files.
#   slowlink  qwen3's model and skopeo's encryption of it, pulled through bench/slowlink.py, a
#           TCP proxy that makes the registry look far away (below). With qwen3 also selected it
#           reuses qwen3's registry and artifact; alone, it pushes qwen3 and has skopeo encrypt
#           it once (untimed setup). Opt-in, not in the default SHAPES: it measures a modelled
#           link, whose numbers follow from the model's parameters more than from this machine,
#           and it keeps the default run (and the README table) comparable with earlier runs.
# The models are pushed with `modelcrypt pack --oci-media-types --reproducible` (one OCI tar layer per
# file, the only layer type skopeo encrypts) to a throwaway registry (CNCF distribution) on a free
# 127.0.0.1 port, its storage on disk in $BENCH_WORKDIR/registry.
#
# Measurements, each RUNS times in alternating order (ours first in odd runs), medians:
#   qwen3, encrypt: ours `modelcrypt encrypt SRC DEST --recipient jwe:PUB` against
#       `skopeo copy --encryption-key jwe:PUB SRC DEST`, registry to registry (RSA 4096 from
#       `modelcrypt keygen --type rsa`). Every result is checked (all layers +encrypted, a JWE key
#       each); skopeo decrypts our first result, untimed, and its bytes are checked.
#   qwen3, encrypted pull; 8g, plain pull; 8g, encrypted pull: ours
#       `modelcrypt pull REF --to TMPFS/ours/SHAPE [--decryption-key PRIV] --no-progress` against
#       the baseline `skopeo copy [--decryption-key PRIV] REF dir:TMPFS/skopeo-dir` + `tar -xf` of
#       every layer blob. Both sides pull the same artifact: skopeo's encryption of it for the
#       encrypted pulls. The first run of each side is checked: the SHA-256 of every delivered file
#       against the source's.
#   slowlink, encrypted pull through the proxy: ours `--parallel-ranges 1`, ours
#       `--parallel-ranges 4` and the same skopeo copy + tar baseline, RUNS times in alternating
#       order (1, 4, base in odd runs; base, 4, 1 in even runs); the first run of each side is
#       checked as above. Both rows share the baseline's runs. Also printed: "parallel ranges
#       speed-up" (the median time with 1 over the one with 4), our range requests and the
#       ones fetched ahead per run (from the pull's debug log), the proxy's ceiling (cap off,
#       one connection, curl of the weights blob: it must be well above the cap, or it is the
#       bottleneck) and the CPU time it used (it shares the cores with the pull and the
#       registry). No target of its own; the RSS target applies to it too.
# The slow link: slowlink.py listens on the first global IPv4 address of this machine (from
# `ip -4 -o addr show scope global`; 127.0.0.1 if there is none, and the output says so), so the
# pull sees a remote registry (both values of --parallel-ranges are given explicitly), and forwards to the registry on 127.0.0.1. Per connection
# it caps registry -> client at SLOWLINK_RATE_MBPS (a per-connection cap such as object stores
# have) and delays each request and the start of each response by half of SLOWLINK_RTT_MS. It
# models a per-connection cap and a per-request delay only: no packet loss, no TCP window
# dynamics (slow start, congestion control), no bottleneck shared by the connections, no TLS.
# The bytes still cross loopback twice, on this machine's cores.
# Reference rates, in the same run, at the start and at the end: one core's SHA-256 and
# AES-256-CTR (`openssl speed -evp ALG -bytes 1048576 -seconds 3`). "x SHA-256" is our pull rate
# over the higher of the two SHA-256 rates: the layer digest is one sequential SHA-256 per file,
# so 1.0 is the single-core ceiling, and more needs the work spread over cores.
#
# How to read it: MB/s is 10^6 bytes of model plaintext (all files) per wall-clock second; ratio
# is our speed over the baseline's (above 1: ours is faster); peak RSS is the largest of the runs
# (/usr/bin/time's maximum resident set; for the baseline, the larger of skopeo and tar). The
# tmpfs is emptied after every pull, so it holds one side's output at a time; the baseline's dir:
# staging also goes to the tmpfs (the seed pipeline wrote it to disk), which favours it, and each
# staged blob is deleted once unpacked, outside the timing, so the tmpfs peaks at the model plus
# its largest file. The registry's blobs come from the page cache if there is room, so the numbers
# measure CPU and memory bandwidth more than disk or network. Other load on the machine (loadavg
# is printed) makes them slower and noisier.
#
# Knobs (environment):
#   RUNS=3            timed rounds per measurement (each runs both sides)
#   SHAPES=qwen3,8g   which shapes (qwen3 | 8g | slowlink, comma or space separated)
#   QWEN_MB=          size of qwen3's weights file in MiB (default: the real 1,503,300,328 bytes)
#   SHARD_MB=2048     size of each of 8g's four shards in MiB
#   BENCH_WORKDIR=/var/tmp/modelcrypt-bench   model cache, registry storage, logs, tmpfs mount
#   MODELCRYPT=<repo>/target/release/modelcrypt   (built with `cargo build --release` if missing)
#   TMPFS_SIZE=20g    size limit of the tmpfs
#   SLOWLINK_RATE_MBPS=80   slowlink: registry -> client cap per connection, MB/s (0: no cap)
#   SLOWLINK_RTT_MS=20      slowlink: round trip added to each request (half each way)
#   KEEP=1            also keep the registry storage and keys afterwards (the model cache and the
#                     logs in $BENCH_WORKDIR/logs are always kept; `rm -rf $BENCH_WORKDIR` to purge)
#   MARKDOWN=1        same as --markdown: also print a README-ready markdown table
#
# Disk: the cached models, plus the registry of one shape at a time: 3x qwen3 (the plain artifact,
# skopeo's encryption of it, one encrypt run's output) or 2x 8g (plain and encrypted): about
# 28 GB free for the defaults with nothing cached, 18 GB with both models cached (slowlink alone:
# 2x qwen3). RAM: the tmpfs peaks at 8g plus one shard (10.7 GB). The script checks both before
# it starts.
#
# Output: progress on stderr; on stdout a table, the targets with PASS/MISS, `RESULT key=value`
# lines (grep '^RESULT'; NA = not measured) and, with --markdown, a markdown table. If a step
# fails, the results of the finished measurements are still printed, marked partial.

set -euo pipefail
export LC_ALL=C # a dot as the decimal separator in $EPOCHREALTIME, awk and printf

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
LOG_TAG=bench
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$SCRIPT_DIR/lib.sh"

RUNS=${RUNS:-3}
SHAPES=${SHAPES:-qwen3,8g}
QWEN_MB=${QWEN_MB:-}
SHARD_MB=${SHARD_MB:-2048}
WORK=${BENCH_WORKDIR:-/var/tmp/modelcrypt-bench}
MC=${MODELCRYPT:-$REPO_ROOT/target/release/modelcrypt}
TMPFS_SIZE=${TMPFS_SIZE:-20g}
KEEP=${KEEP:-0}
MARKDOWN=${MARKDOWN:-0}
SLOWLINK_RATE_MBPS=${SLOWLINK_RATE_MBPS:-80}
SLOWLINK_RTT_MS=${SLOWLINK_RTT_MS:-20}

LOG_DIR=$WORK/logs
TMPFS=$WORK/tmpfs
KEY_DIR=$WORK/keys
PRIV=$KEY_DIR/priv.pem
PUB=$PRIV.pub
MC_GLOBAL=(--plain-http)

QWEN3_REAL_WEIGHTS=1503300328 # Qwen/Qwen3-0.6B's model.safetensors
SMALL_FILES_BYTES=15893419    # config, generation_config, tokenizer*, vocab, merges, LICENSE, README
SHARDS=4

# Targets (the "saturate the pipe" issue).
T_QWEN_ENC_SHA=0.70  # encrypted qwen3 pull, x SHA-256
T_QWEN_ENC_BASE=12   # encrypted qwen3 pull, x baseline
T_SHARDS_SHA=1.00    # 8g pulls, plain and encrypted, x SHA-256
T_RSS_MIB=64         # our peak RSS, every run
T_ENCRYPT_BASE=10    # encrypt, x skopeo

# Results. R[PHASE,KEY]: title, bytes, ours and base (run seconds, space separated), order,
# ours_rss and base_rss (KiB, max of runs), base_name. PHASES_DONE lists finished phases in order.
declare -A R=()
declare -A INFO=() # per shape: name, bytes, files, detail, pack_s; and other facts for the report
PHASES_DONE=()
LOAD_START="" LOAD_END="" SHA_START="" SHA_END="" AES_START="" AES_END=""
STALE_BINARY=""
LOCKED=0

usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; }

# ---------------------------------------------------------------------------- setup

parse_args() {
    local a
    for a in "$@"; do
        case $a in
        --markdown) MARKDOWN=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument '$a' (try --help)" ;;
        esac
    done
    [[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, not '$RUNS'"
    [[ $SHARD_MB =~ ^[1-9][0-9]*$ ]] || die "SHARD_MB must be a positive integer, not '$SHARD_MB'"
    [[ -z $QWEN_MB || $QWEN_MB =~ ^[1-9][0-9]*$ ]] || die "QWEN_MB must be a positive integer, not '$QWEN_MB'"
    [[ $SLOWLINK_RATE_MBPS =~ ^[0-9]+([.][0-9]+)?$ ]] ||
        die "SLOWLINK_RATE_MBPS must be a number of MB/s (0: no cap), not '$SLOWLINK_RATE_MBPS'"
    [[ $SLOWLINK_RTT_MS =~ ^[0-9]+([.][0-9]+)?$ ]] ||
        die "SLOWLINK_RTT_MS must be a number of milliseconds, not '$SLOWLINK_RTT_MS'"
    local s
    SEL=()
    for s in ${SHAPES//,/ }; do
        case $s in
        qwen3 | qwen3-0.6b) SEL+=(qwen3) ;;
        8g | 8g-4shards | shards) SEL+=(shards) ;;
        slowlink) SEL+=(slowlink) ;;
        *) die "unknown shape '$s' in SHAPES (qwen3, 8g, slowlink)" ;;
        esac
    done
    ((${#SEL[@]})) || die "SHAPES selects nothing"
    # Each shape once, in the canonical order.
    local -a sel=()
    for s in qwen3 shards slowlink; do
        if [[ " ${SEL[*]} " == *" $s "* ]]; then sel+=("$s"); fi
    done
    SEL=("${sel[@]}")

    if [[ -n $QWEN_MB ]]; then
        QWEN_BYTES=$((QWEN_MB * 1048576))
        INFO[qwen3,name]=qwen3-0.6b-${QWEN_MB}m
    else
        QWEN_BYTES=$QWEN3_REAL_WEIGHTS
        INFO[qwen3,name]=qwen3-0.6b
    fi
    SHARD_BYTES=$((SHARD_MB * 1048576))
    if ((SHARD_MB == 2048)); then INFO[shards,name]=8g-4shards; else INFO[shards,name]=4x${SHARD_MB}m-shards; fi
    INFO[qwen3,bytes]=$((QWEN_BYTES + SMALL_FILES_BYTES))
    INFO[qwen3,maxfile]=$QWEN_BYTES
    INFO[shards,bytes]=$((SHARDS * SHARD_BYTES + SMALL_FILES_BYTES + 1024)) # + the index, about
    INFO[shards,maxfile]=$((SHARD_BYTES > 11422654 ? SHARD_BYTES : 11422654))
    # slowlink pulls qwen3's model.
    INFO[slowlink,name]=${INFO[qwen3,name]}
    INFO[slowlink,bytes]=${INFO[qwen3,bytes]}
    INFO[slowlink,maxfile]=${INFO[qwen3,maxfile]}
}

selected() { [[ " ${SEL[*]} " == *" $1 "* ]]; }

ensure_modelcrypt() {
    if [[ ! -x $MC ]]; then
        [[ -z ${MODELCRYPT:-} ]] || die "MODELCRYPT=$MC is not an executable file"
        command -v cargo >/dev/null || die "no $MC and no cargo to build it"
        log "no $MC: building it (cargo build --release)"
        (cd "$REPO_ROOT" && cargo build --release) >&2 || die "cargo build --release failed"
        [[ -x $MC ]] || die "cargo build --release did not make $MC"
    fi
    local cmd flag help
    local -a cmds=("pack --oci-media-types --reproducible --no-progress"
        "pull --to --decryption-key --no-progress" "encrypt --recipient" "keygen --type --out")
    if selected slowlink; then cmds+=("pull --parallel-ranges"); fi
    for cmd in "${cmds[@]}"; do
        # shellcheck disable=SC2086 # split on purpose: a subcommand and its flags
        set -- $cmd
        help=$("$MC" "$1" --help 2>&1) || die "'$MC $1 --help' failed: $help"
        for flag in "${@:2}"; do
            [[ $help == *"$flag"* ]] || die "'$MC $1' has no $flag flag (an old binary?)"
        done
    done
    # Plain-text logs on stderr: newer binaries log JSON when stdout is not a terminal.
    if [[ $("$MC" --help 2>&1) == *--log-format* ]]; then MC_GLOBAL+=(--log-format text); fi
    STALE_BINARY=$(find "$REPO_ROOT/src" "$REPO_ROOT/Cargo.toml" "$REPO_ROOT/Cargo.lock" \
        -newer "$MC" -print -quit 2>/dev/null || true)
    if [[ -n $STALE_BINARY ]]; then
        log "warning: $MC is older than $STALE_BINARY: rebuild for current numbers"
    fi
}

# preflight: enough disk in $WORK, a big enough tmpfs, and (a warning only) enough free RAM.
preflight() {
    local s need_model=0 reg=0 reg_peak=0 reg_sum=0 have avail tmpfs_need=0 tmpfs_size t mem
    for s in "${SEL[@]}"; do
        # slowlink uses qwen3's model and registry: counted once, as qwen3's if both run.
        if [[ $s == slowlink ]] && selected qwen3; then continue; fi
        have=0
        if [[ -d $WORK/model/${INFO[$s,name]} ]]; then have=$(dir_bytes "$WORK/model/${INFO[$s,name]}"); fi
        if ((INFO[$s,bytes] > have)); then need_model=$((need_model + INFO[$s,bytes] - have)); fi
        if [[ $s == qwen3 ]]; then reg=$((3 * INFO[$s,bytes])); else reg=$((2 * INFO[$s,bytes])); fi
        reg_sum=$((reg_sum + reg))
        if ((reg > reg_peak)); then reg_peak=$reg; fi
        t=$((INFO[$s,bytes] + INFO[$s,maxfile]))
        if ((t > tmpfs_need)); then tmpfs_need=$t; fi
    done
    if [[ $KEEP == 1 ]]; then reg_peak=$reg_sum; fi
    local need=$((need_model + reg_peak + reg_peak / 50 + 268435456))
    avail=$(df -B1 --output=avail "$WORK" | tail -n 1 | tr -d ' ')
    if ((need > avail)); then
        die "not enough disk in $WORK: $(gb "$need") GB needed ($(gb "$need_model") GB of models to make, $(gb "$reg_peak") GB of registry storage, slack), $(gb "$avail") GB free. Set BENCH_WORKDIR to a bigger disk, or SHAPES=qwen3, or a smaller SHARD_MB"
    fi
    log "disk: $(gb "$need") GB needed in $WORK, $(gb "$avail") GB free"
    tmpfs_size=$(numfmt --from=iec "${TMPFS_SIZE^^}") || die "TMPFS_SIZE '$TMPFS_SIZE' is not a size"
    ((tmpfs_size >= tmpfs_need)) ||
        die "TMPFS_SIZE=$TMPFS_SIZE is too small: the baseline needs $(gb "$tmpfs_need") GB (the model plus its largest file)"
    mem=$(awk '/^MemAvailable:/ {printf "%.0f\n", $2 * 1024}' /proc/meminfo)
    if ((mem < tmpfs_need + 1073741824)); then
        log "warning: $(gb "$mem") GB of RAM available, the tmpfs will hold up to $(gb "$tmpfs_need") GB"
    fi
}

cleanup() {
    local rc=$?
    set +e
    trap - INT TERM
    if ((LOCKED)); then
        stop_slowlink
        stop_registry
        umount_tmpfs
        rmdir "$TMPFS" 2>/dev/null
        if [[ $KEEP == 1 ]]; then
            log "kept the registry storage ($WORK/registry) and keys ($KEY_DIR): KEEP=1"
        else
            rm -rf "$WORK/registry" "$KEY_DIR" "$WORK/registry.yml"
        fi
        if ((rc != 0 && ${#PHASES_DONE[@]})); then
            log "stopped early (exit $rc); the finished measurements follow, marked partial"
            (report partial)
        fi
        log "logs in $LOG_DIR"
    fi
    exit "$rc"
}

# ------------------------------------------------------------------------ phases

# phase_begin PHASE TITLE BYTES BASE_NAME
phase_begin() {
    R[$1,title]=$2 R[$1,bytes]=$3 R[$1,base_name]=$4
    R[$1,ours]="" R[$1,base]="" R[$1,order]="" R[$1,ours_rss]=0 R[$1,base_rss]=0
}

# record PHASE ours|base: append RUN_S and fold RUN_RSS_KIB into the maximum.
record() {
    R[$1,$2]+="${R[$1,$2]:+ }$RUN_S"
    if ((RUN_RSS_KIB > R[$1,$2_rss])); then R[$1,$2_rss]=$RUN_RSS_KIB; fi
}

order_of() { if (($1 % 2)); then echo "ours base"; else echo "base ours"; fi; }

# pull_phase PHASE TITLE SHAPE REF [PULL_ARG...]: RUNS alternating pulls of REF by both sides into
# the tmpfs; the first run of each side is checked against the shape's sums. PULL_ARGs go to both
# `modelcrypt pull` and `skopeo copy` (--decryption-key PRIV).
pull_phase() {
    local p=$1 title=$2 s=$3 ref=$4 i who
    shift 4
    local dest=$TMPFS/ours/${INFO[$s,name]} sums=$WORK/model/${INFO[$s,name]}.sha256
    phase_begin "$p" "$title" "${INFO[$s,bytes]}" "skopeo copy + tar"
    for ((i = 1; i <= RUNS; i++)); do
        R[$p,order]+="${R[$p,order]:+,}$(order_of "$i" | tr ' ' '/')"
        for who in $(order_of "$i"); do
            if [[ $who == ours ]]; then
                ours_pull "$ref" "$dest" "$LOG_DIR/$p-ours-$i.log" "$@"
                if ((i == 1)); then check_delivery "$sums" "$dest" "$p: ours"; fi
            else
                baseline_pull "$ref" "$TMPFS/baseline-out" "$LOG_DIR/$p-base-$i.log" "$@"
                if ((i == 1)); then check_delivery "$sums" "$TMPFS/baseline-out" "$p: baseline"; fi
            fi
            record "$p" "$who"
            log "$p run $i $who: $RUN_S s, $(kib_to_mib "$RUN_RSS_KIB") MiB"
            clear_tmpfs
        done
    done
    PHASES_DONE+=("$p")
}

# prepare_shape SHAPE SIZE...: make (or reuse) the model and its sums, start a fresh registry for
# the shape and push the model as OCI tar layers to bench/SHAPE:oci. Sets BASE.
prepare_shape() {
    local s=$1 dir=$WORK/model/${INFO[$1,name]} t0
    shift
    make_model "$dir" "$@"
    model_sums "$dir" "$dir.sha256"
    INFO[$s,bytes]=$(dir_bytes "$dir")
    INFO[$s,files]=$(find "$dir" -type f | wc -l)
    rm -rf "$WORK/registry/$s"
    start_registry "$WORK/registry/$s"
    BASE=docker://127.0.0.1:$REG_PORT/bench
    log "pushing ${INFO[$s,name]} ($(gb "${INFO[$s,bytes]}") GB) with pack --oci-media-types --reproducible"
    t0=$(now_us)
    run_logged "$LOG_DIR/$s-pack.log" "$MC" "${MC_GLOBAL[@]}" pack "$dir" "$BASE/$s:oci" \
        --oci-media-types --reproducible --no-progress
    INFO[$s,pack_s]=$(us_to_s $(($(now_us) - t0)))
}

finish_shape() {
    stop_registry
    if [[ $KEEP != 1 ]]; then rm -rf "$WORK/registry/$1"; fi
}

run_qwen3() {
    local i who summary p=qwen3_encrypt name
    prepare_shape qwen3 "$QWEN_BYTES"
    name=${INFO[qwen3,name]}
    INFO[qwen3,detail]="one weights file of $QWEN_BYTES bytes"

    registry_ingest "$WORK/model/$name/model.safetensors" "$WORK/model/$name.sha256"

    # Encrypt: each run writes a new artifact; all but skopeo's first (which the pulls use) are
    # deleted and garbage-collected after their check, to bound the registry's disk use.
    phase_begin "$p" "encrypt $name" "${INFO[qwen3,bytes]}" "skopeo copy --encryption-key"
    for ((i = 1; i <= RUNS; i++)); do
        R[$p,order]+="${R[$p,order]:+,}$(order_of "$i" | tr ' ' '/')"
        for who in $(order_of "$i"); do
            if [[ $who == ours ]]; then
                timed "$LOG_DIR/$p-ours-$i.log" "$MC" "${MC_GLOBAL[@]}" encrypt "$BASE/qwen3:oci" \
                    "$BASE/enc-ours-$i:v1" --recipient "jwe:$PUB" --no-progress
                RUN_S=$(us_to_s "$RUN_US")
                summary=$(encrypted_summary bench/enc-ours-$i v1) ||
                    die "our encrypt wrote an artifact with a plain layer: $summary"
                record "$p" ours
                log "$p run $i ours: $RUN_S s, $(kib_to_mib "$RUN_RSS_KIB") MiB"
                if ((i == 1)); then
                    INFO[enc_ours]=$summary
                    log "checking that skopeo decrypts our encrypted artifact (untimed)"
                    baseline_pull "$BASE/enc-ours-1:v1" "$TMPFS/baseline-out" \
                        "$LOG_DIR/interop-skopeo-decrypts-ours.log" --decryption-key "$PRIV"
                    check_delivery "$WORK/model/$name.sha256" "$TMPFS/baseline-out" \
                        "skopeo decrypting ours"
                    clear_tmpfs
                    INFO[interop]=ok
                fi
                drop_repos "bench/enc-ours-$i"
            else
                timed "$LOG_DIR/$p-base-$i.log" skopeo --insecure-policy copy --src-tls-verify=false \
                    --dest-tls-verify=false --encryption-key "jwe:$PUB" "$BASE/qwen3:oci" \
                    "$BASE/enc-skopeo-$i:v1"
                RUN_S=$(us_to_s "$RUN_US")
                summary=$(encrypted_summary bench/enc-skopeo-$i v1) ||
                    die "skopeo wrote an artifact with a plain layer: $summary"
                record "$p" base
                log "$p run $i skopeo: $RUN_S s, $(kib_to_mib "$RUN_RSS_KIB") MiB"
                if ((i == 1)); then INFO[enc_skopeo]=$summary; else drop_repos "bench/enc-skopeo-$i"; fi
            fi
        done
    done
    PHASES_DONE+=("$p")

    pull_phase qwen3_pull_enc "pull $name, encrypted" qwen3 "$BASE/enc-skopeo-1:v1" \
        --decryption-key "$PRIV"
    if selected slowlink; then slowlink_phases; fi
    finish_shape qwen3
}

# registry_ingest FILE SUMS: how fast the registry stores one upload of FILE (a single
# monolithic PUT by curl, no client-side work): the ceiling for any encrypt that writes there.
registry_ingest() {
    local file=$1 sums=$2 digest loc t0 bytes
    digest=$(awk -v f="$(basename "$file")" '$2 == f || $2 == "./" f || $2 == "*" f {print $1}' "$sums" | head -n 1)
    [[ -n $digest ]] || digest=$(sha256sum "$file" | cut -d' ' -f1)
    loc=$(curl -sf -D - -o /dev/null -X POST "http://127.0.0.1:$REG_PORT/v2/bench/ingest/blobs/uploads/" |
        tr -d '\r' | awk 'tolower($1) == "location:" {print $2}')
    [[ $loc == http* ]] || loc=http://127.0.0.1:$REG_PORT$loc
    bytes=$(stat -c %s "$file")
    t0=$(now_us)
    curl -sf -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' -T "$file" \
        "$loc&digest=sha256:$digest" || die "the registry refused a monolithic upload"
    INFO[ingest_mbps]=$(mbps "$bytes" "$(us_to_s $(($(now_us) - t0)))")
    log "registry ingest (one monolithic PUT of $(basename "$file"), curl): ${INFO[ingest_mbps]} MB/s"
}

run_shards() {
    local name summary i
    local -a sizes=()
    for ((i = 0; i < SHARDS; i++)); do sizes+=("$SHARD_BYTES"); done
    prepare_shape shards "${sizes[@]}"
    name=${INFO[shards,name]}
    INFO[shards,detail]="$SHARDS shards of $SHARD_BYTES bytes"

    pull_phase shards_pull_plain "pull $name, plain" shards "$BASE/shards:oci"

    # The encrypted artifact: skopeo's encryption of the plain one (once, untimed for the
    # comparison); the plain artifact is dropped afterwards.
    log "encrypting $name with skopeo copy --encryption-key (setup, once)"
    timed "$LOG_DIR/shards-encrypt-skopeo.log" skopeo --insecure-policy copy \
        --src-tls-verify=false --dest-tls-verify=false --encryption-key "jwe:$PUB" \
        "$BASE/shards:oci" "$BASE/shards-enc:v1"
    INFO[shards,encrypt_s]=$(us_to_s "$RUN_US")
    summary=$(encrypted_summary bench/shards-enc v1) ||
        die "skopeo wrote an artifact with a plain layer: $summary"
    drop_repos bench/shards

    pull_phase shards_pull_enc "pull $name, encrypted" shards "$BASE/shards-enc:v1" \
        --decryption-key "$PRIV"
    finish_shape shards
}

# ---------------------------------------------------------------------- slowlink

# run_slowlink: alone, push qwen3 and have skopeo encrypt it once (untimed setup), as the qwen3
# shape does; with qwen3 selected, run_qwen3 already ran the slowlink phases on its registry.
run_slowlink() {
    if selected qwen3; then return 0; fi
    local name summary
    prepare_shape qwen3 "$QWEN_BYTES"
    name=${INFO[qwen3,name]}
    INFO[qwen3,detail]="one weights file of $QWEN_BYTES bytes"
    log "encrypting $name with skopeo copy --encryption-key (setup, once)"
    timed "$LOG_DIR/slowlink-encrypt-skopeo.log" skopeo --insecure-policy copy \
        --src-tls-verify=false --dest-tls-verify=false --encryption-key "jwe:$PUB" \
        "$BASE/qwen3:oci" "$BASE/enc-skopeo-1:v1"
    INFO[slowlink,encrypt_s]=$(us_to_s "$RUN_US")
    summary=$(encrypted_summary bench/enc-skopeo-1 v1) ||
        die "skopeo wrote an artifact with a plain layer: $summary"
    INFO[enc_skopeo]=$summary
    drop_repos bench/qwen3
    slowlink_phases
    finish_shape qwen3
}

# slowlink_order RUN: who goes when in run RUN: 1 range, 4 ranges, baseline; reversed when even.
slowlink_order() { if (($1 % 2)); then echo "r1 r4 base"; else echo "base r4 r1"; fi; }

# range_counts LOG: "REQUESTS/AHEAD", our range requests and the ones fetched ahead of delivery,
# summed over the layers, from a pull's debug log (text or JSON); NA if it has none.
range_counts() {
    sed 's/\x1b\[[0-9;]*m//g' "$1" | awk '/layer verified/ {
        if (match($0, /range_requests[":= ]+[0-9]+/)) {
            v = substr($0, RSTART, RLENGTH); gsub(/[^0-9]/, "", v); r += v; n++
        }
        if (match($0, /ahead[":= ]+[0-9]+/)) {
            v = substr($0, RSTART, RLENGTH); gsub(/[^0-9]/, "", v); a += v
        }
    } END {if (n) printf "%d/%d\n", r, a; else print "NA"}'
}

# slowlink_phases: the encrypted qwen3 pulls (bench/enc-skopeo-1:v1 in the running registry)
# through slowlink.py: first the proxy's own ceiling, then RUNS rounds of ours with 1 and with 4
# ranges and the baseline. Records slowlink_r1 and slowlink_r4, which share the baseline's runs.
slowlink_phases() {
    local name=${INFO[qwen3,name]} host latency line blob size out got secs ref i who n order cpu0
    local sums=$WORK/model/${INFO[qwen3,name]}.sha256 dest=$TMPFS/ours/${INFO[qwen3,name]}
    host=$(listen_host)
    if [[ -z $host ]]; then
        host=127.0.0.1
        INFO[slowlink,host_note]="no global IPv4 address: the proxy listens on 127.0.0.1 (a loopback registry to modelcrypt)"
        log "warning: ${INFO[slowlink,host_note]}"
    fi
    INFO[slowlink,host]=$host
    latency=$(awk -v r="$SLOWLINK_RTT_MS" 'BEGIN {printf "%g", r / 2}')

    # The proxy's own ceiling: no cap, the same latency, one connection, the largest blob.
    line=$(largest_blob bench/enc-skopeo-1 v1) || die "cannot read bench/enc-skopeo-1:v1's manifest"
    read -r blob size <<<"$line"
    start_slowlink "$host" 0 "$latency" "$LOG_DIR/slowlink.log"
    out=$(curl -sf -o /dev/null -w '%{size_download} %{time_total}' \
        "http://$host:$SL_PORT/v2/bench/enc-skopeo-1/blobs/$blob") ||
        die "curl of a blob through slowlink.py failed (see $LOG_DIR/slowlink.log)"
    stop_slowlink
    read -r got secs <<<"$out"
    ((got == size)) || die "curl through slowlink.py got $got bytes of $size"
    INFO[slowlink,ceiling_mbps]=$(mbps "$size" "$secs")
    log "slowlink.py's ceiling (no cap, one connection, curl of a $size-byte blob): ${INFO[slowlink,ceiling_mbps]} MB/s"
    if ! ge "${INFO[slowlink,ceiling_mbps]}" "$(awk -v r="$SLOWLINK_RATE_MBPS" 'BEGIN {print 4 * r}')"; then
        INFO[slowlink,ceiling_note]="below 4x the cap: the proxy itself may hold the pulls back"
        log "warning: slowlink.py's ceiling is ${INFO[slowlink,ceiling_note]}"
    fi

    start_slowlink "$host" "${SLOWLINK_RATE_MBPS}M" "$latency" "$LOG_DIR/slowlink.log"
    ref=docker://$host:$SL_PORT/bench/enc-skopeo-1:v1
    log "slowlink.py on $host:$SL_PORT -> 127.0.0.1:$REG_PORT: $SLOWLINK_RATE_MBPS MB/s per connection, $SLOWLINK_RTT_MS ms round trip"
    phase_begin slowlink_r1 "pull $name, encrypted, slowlink, ranges 1" "${INFO[qwen3,bytes]}" "skopeo copy + tar"
    phase_begin slowlink_r4 "pull $name, encrypted, slowlink, ranges 4" "${INFO[qwen3,bytes]}" "skopeo copy + tar"
    INFO[slowlink,ranges_r1]="" INFO[slowlink,ranges_r4]=""
    cpu0=$(slowlink_cpu_s)
    for ((i = 1; i <= RUNS; i++)); do
        order=$(slowlink_order "$i")
        R[slowlink_r1,order]+="${R[slowlink_r1,order]:+,}${order// //}"
        R[slowlink_r4,order]=${R[slowlink_r1,order]}
        for who in $order; do
            if [[ $who == base ]]; then
                baseline_pull "$ref" "$TMPFS/baseline-out" "$LOG_DIR/slowlink-base-$i.log" \
                    --decryption-key "$PRIV"
                if ((i == 1)); then check_delivery "$sums" "$TMPFS/baseline-out" "slowlink: baseline"; fi
                record slowlink_r1 base
                record slowlink_r4 base
            else
                n=${who#r}
                # Debug logs: each layer's range requests and the ones fetched ahead.
                MODELCRYPT_LOG=debug ours_pull "$ref" "$dest" "$LOG_DIR/slowlink-ours$n-$i.log" \
                    --decryption-key "$PRIV" --parallel-ranges "$n"
                if ((i == 1)); then check_delivery "$sums" "$dest" "slowlink: ours, ranges $n"; fi
                record "slowlink_$who" ours
                INFO[slowlink,ranges_$who]+="${INFO[slowlink,ranges_$who]:+,}$(range_counts "$LOG_DIR/slowlink-ours$n-$i.log")"
            fi
            log "slowlink run $i $who: $RUN_S s, $(kib_to_mib "$RUN_RSS_KIB") MiB"
            clear_tmpfs
        done
    done
    INFO[slowlink,proxy_cpu_s]=$(awk -v a="$(slowlink_cpu_s)" -v b="$cpu0" 'BEGIN {printf "%.1f", a - b}')
    stop_slowlink
    PHASES_DONE+=(slowlink_r1 slowlink_r4)
}

# ----------------------------------------------------------------------- report

# stats PHASE: S[...] = medians, rates, ratio, fractions, RSS in MiB; NA where not measured.
declare -A S=()
stats() {
    local p=$1 sha=$2
    local -a ours base
    read -r -a ours <<<"${R[$p,ours]}"
    read -r -a base <<<"${R[$p,base]}"
    S=([om]=NA [omb]=NA [bm]=NA [bmb]=NA [ratio]=NA [xsha]=NA [orss]=NA [brss]=NA)
    if ((${#ours[@]})); then
        S[om]=$(median "${ours[@]}")
        S[omb]=$(mbps "${R[$p,bytes]}" "${S[om]}")
        S[xsha]=$(ratio "${S[omb]}" "$sha")
        S[orss]=$(kib_to_mib "${R[$p,ours_rss]}")
    fi
    if ((${#base[@]})); then
        S[bm]=$(median "${base[@]}")
        S[bmb]=$(mbps "${R[$p,bytes]}" "${S[bm]}")
        S[brss]=$(kib_to_mib "${R[$p,base_rss]}")
    fi
    if [[ ${S[om]} != NA && ${S[bm]} != NA ]]; then S[ratio]=$(ratio "${S[bm]}" "${S[om]}"); fi
}

ge() { awk -v a="$1" -v b="$2" 'BEGIN {exit !(a + 0 >= b + 0)}'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN {exit !(a + 0 <= b + 0)}'; }
max_of() { printf '%s\n' "$@" | grep -v '^$' | sort -g | tail -n 1; }

done_phase() { [[ " ${PHASES_DONE[*]} " == *" $1 "* ]]; }

# verdict VALUE OP GOAL: PASS, MISS, or NA when VALUE is NA.
verdict() {
    if [[ $1 == NA ]]; then
        echo NA
    elif "$2" "$1" "$3"; then
        echo PASS
    else
        echo MISS
    fi
}

# slowlink_cap: the per-connection cap, for people.
slowlink_cap() {
    if [[ $(awk -v r="$SLOWLINK_RATE_MBPS" 'BEGIN {print (r > 0)}') == 1 ]]; then
        echo "$SLOWLINK_RATE_MBPS MB/s"
    else
        echo "no cap"
    fi
}

# slowlink_floor: seconds one connection at the cap needs for the model's bytes (NA: no cap).
slowlink_floor() {
    awk -v b="${INFO[qwen3,bytes]}" -v r="$SLOWLINK_RATE_MBPS" \
        'BEGIN {if (r > 0) printf "%.1f", b / (r * 1e6); else print "NA"}'
}

# slowlink_speedup: the median time with 1 range over the one with 4.
slowlink_speedup() {
    local -a r1 r4
    read -r -a r1 <<<"${R[slowlink_r1,ours]}"
    read -r -a r4 <<<"${R[slowlink_r4,ours]}"
    if ((${#r1[@]} && ${#r4[@]})); then ratio "$(median "${r1[@]}")" "$(median "${r4[@]}")"; else echo NA; fi
}

# slowlink_results SHA: the slowlink RESULT lines: ours with 1 range (ours1), with 4 (ours4), the
# baseline (base), and the link.
slowlink_results() {
    local sha=$1 k p
    echo "RESULT slowlink_host=${INFO[slowlink,host]}"
    echo "RESULT slowlink_host_is_loopback=$([[ ${INFO[slowlink,host]} == 127.* ]] && echo yes || echo no)"
    echo "RESULT slowlink_rate_mbps=$SLOWLINK_RATE_MBPS"
    echo "RESULT slowlink_rtt_ms=$SLOWLINK_RTT_MS"
    echo "RESULT slowlink_one_connection_floor_s=$(slowlink_floor)"
    echo "RESULT slowlink_proxy_ceiling_mbps=${INFO[slowlink,ceiling_mbps]:-NA}"
    echo "RESULT slowlink_proxy_cpu_s=${INFO[slowlink,proxy_cpu_s]:-NA}"
    echo "RESULT slowlink_bytes=${R[slowlink_r1,bytes]}"
    for k in 1 4; do
        p=slowlink_r$k
        stats "$p" "$sha"
        echo "RESULT slowlink_ours${k}_runs_s=${R[$p,ours]// /,}"
        echo "RESULT slowlink_ours${k}_s=${S[om]}"
        echo "RESULT slowlink_ours${k}_mbps=${S[omb]}"
        echo "RESULT slowlink_ours${k}_x_sha256=${S[xsha]}"
        echo "RESULT slowlink_ours${k}_ratio_over_baseline=${S[ratio]}"
        echo "RESULT slowlink_ours${k}_peak_rss_mib=${S[orss]}"
        echo "RESULT slowlink_ours${k}_range_requests_ahead=${INFO[slowlink,ranges_r$k]:-NA}"
    done
    echo "RESULT slowlink_base_runs_s=${R[slowlink_r1,base]// /,}"
    echo "RESULT slowlink_base_s=${S[bm]}"
    echo "RESULT slowlink_base_mbps=${S[bmb]}"
    echo "RESULT slowlink_base_peak_rss_mib=${S[brss]}"
    echo "RESULT slowlink_speedup_4_vs_1=$(slowlink_speedup)"
}

# report [partial]
report() {
    local partial=${1:-} p sha aes i
    sha=$(max_of "$SHA_START" "$SHA_END")
    aes=$(max_of "$AES_START" "$AES_END")
    [[ -n $LOAD_END ]] || LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
    [[ -n $sha ]] || sha=NA

    echo
    echo "modelcrypt benchmark${partial:+ (PARTIAL: stopped early by an error or a signal)}: loopback registry -> tmpfs${INFO[slowlink,host]:+ (slowlink rows: through bench/slowlink.py)}, RUNS=$RUNS in alternating order, medians"
    echo "machine: nproc=$(nproc), $(awk '/^MemTotal:/ {printf "%.1f GiB RAM", $2 / 1048576}' /proc/meminfo), $(openssl version | cut -d' ' -f1-2), $(skopeo --version), $("$MC" --version)"
    echo "loadavg: ${LOAD_START} at start, ${LOAD_END} at end"
    echo "one core (openssl speed): SHA-256 ${SHA_START:-NA} MB/s at start, ${SHA_END:-NA} at end; AES-256-CTR ${AES_START:-NA} / ${AES_END:-NA} MB/s; x SHA-256 below uses $sha"
    for s in qwen3 shards; do
        [[ -n ${INFO[$s,files]:-} ]] || continue
        echo "shape ${INFO[$s,name]}: ${INFO[$s,bytes]} bytes in ${INFO[$s,files]} files (${INFO[$s,detail]}); pack took ${INFO[$s,pack_s]} s"
    done
    [[ -z ${INFO[enc_skopeo]:-} ]] || echo "encrypted by skopeo: ${INFO[enc_skopeo]}"
    [[ -z ${INFO[enc_ours]:-} ]] || echo "encrypted by ours:   ${INFO[enc_ours]}"
    [[ -z ${INFO[interop]:-} ]] || echo "skopeo decrypts our encrypted artifact: ${INFO[interop]}"
    [[ -z ${INFO[ingest_mbps]:-} ]] || echo "registry ingest ceiling (curl, one monolithic PUT of the weights file): ${INFO[ingest_mbps]} MB/s; no encrypt into this registry can beat it"
    [[ -z ${INFO[shards,encrypt_s]:-} ]] || echo "skopeo encrypted ${INFO[shards,name]} once in ${INFO[shards,encrypt_s]} s (setup for the encrypted pull)"
    [[ -z ${INFO[slowlink,encrypt_s]:-} ]] || echo "skopeo encrypted ${INFO[qwen3,name]} once in ${INFO[slowlink,encrypt_s]} s (setup for the slowlink pulls)"
    if [[ -n ${INFO[slowlink,host]:-} ]]; then
        echo "slowlink: registry behind bench/slowlink.py on ${INFO[slowlink,host]} (not loopback to the pull${INFO[slowlink,host_note]:+; NO: ${INFO[slowlink,host_note]}}), per connection $(slowlink_cap), $SLOWLINK_RTT_MS ms round trip per request; one connection at the cap needs $(slowlink_floor) s for the model"
        echo "slowlink.py's ceiling (no cap, one connection, curl of the weights blob): ${INFO[slowlink,ceiling_mbps]:-NA} MB/s${INFO[slowlink,ceiling_note]:+ (${INFO[slowlink,ceiling_note]})}; it used ${INFO[slowlink,proxy_cpu_s]:-NA} s of CPU over the timed runs"
    fi
    [[ -z $STALE_BINARY ]] || echo "warning: $MC is older than $STALE_BINARY"
    if [[ -n $QWEN_MB || $SHARD_MB != 2048 ]]; then
        echo "note: not the default sizes (QWEN_MB=${QWEN_MB:-default} SHARD_MB=$SHARD_MB): the targets are meant for the full-size shapes"
    fi
    echo

    local w=34
    for p in "${PHASES_DONE[@]}"; do
        if ((${#R[$p,title]} > w)); then w=${#R[$p,title]}; fi
    done
    printf '%-*s %9s %9s %7s | %9s %9s | %7s | %9s %9s\n' "$w" "" ours_s ours_MB/s "x SHA" base_s base_MB/s ratio "RSS ours" "RSS base"
    for p in "${PHASES_DONE[@]}"; do
        stats "$p" "$sha"
        printf '%-*s %9s %9s %7s | %9s %9s | %6sx | %5s MiB %5s MiB\n' "$w" "${R[$p,title]}" "${S[om]}" \
            "${S[omb]}" "${S[xsha]}" "${S[bm]}" "${S[bmb]}" "${S[ratio]}" "${S[orss]}" "${S[brss]}"
    done
    echo "(base: skopeo copy + tar -xf for the pulls, skopeo copy --encryption-key for encrypt; ratio = ours' speed / base's)"
    if done_phase slowlink_r4; then
        echo "(the two slowlink rows share one set of baseline runs, through the same proxy)"
        echo "parallel ranges speed-up: $(slowlink_speedup)x (4 vs 1)"
    fi
    echo
    echo "runs in seconds (order per run: who went first):"
    for p in "${PHASES_DONE[@]}"; do
        echo "  ${R[$p,title]}: ours ${R[$p,ours]} | base ${R[$p,base]} | order ${R[$p,order]}"
    done
    if done_phase slowlink_r4; then
        echo "  slowlink, our range requests/fetched ahead per run (all layers): ranges 1: ${INFO[slowlink,ranges_r1]}; ranges 4: ${INFO[slowlink,ranges_r4]}"
    fi

    # Targets
    local -a tl=() tv=() tg=() tr=() tk=()
    target() { # KEY LABEL VALUE OP GOAL
        tk+=("$1") tl+=("$2") tv+=("$3") tg+=("$5") tr+=("$(verdict "$3" "$4" "$5")")
    }
    local v
    if done_phase qwen3_pull_enc; then
        stats qwen3_pull_enc "$sha"
        target qwen3_pull_enc_x_sha256 "encrypted pull ${INFO[qwen3,name]} >= ${T_QWEN_ENC_SHA}x SHA-256" "${S[xsha]}" ge "$T_QWEN_ENC_SHA"
        target qwen3_pull_enc_x_baseline "encrypted pull ${INFO[qwen3,name]} >= ${T_QWEN_ENC_BASE}x baseline" "${S[ratio]}" ge "$T_QWEN_ENC_BASE"
    fi
    if done_phase shards_pull_plain; then
        stats shards_pull_plain "$sha"
        target shards_pull_plain_x_sha256 "plain pull ${INFO[shards,name]} >= ${T_SHARDS_SHA}x SHA-256" "${S[xsha]}" ge "$T_SHARDS_SHA"
    fi
    if done_phase shards_pull_enc; then
        stats shards_pull_enc "$sha"
        target shards_pull_enc_x_sha256 "encrypted pull ${INFO[shards,name]} >= ${T_SHARDS_SHA}x SHA-256" "${S[xsha]}" ge "$T_SHARDS_SHA"
    fi
    local worst=0 worst_p=""
    for p in "${PHASES_DONE[@]}"; do
        if ((R[$p,ours_rss] > worst)); then worst=${R[$p,ours_rss]} worst_p=${R[$p,title]}; fi
    done
    if ((worst)); then
        v=$(kib_to_mib "$worst")
        target ours_peak_rss "our peak RSS <= $T_RSS_MIB MiB (max: $worst_p)" "$v" le "$T_RSS_MIB"
    fi
    if done_phase qwen3_encrypt; then
        stats qwen3_encrypt "$sha"
        target qwen3_encrypt_x_skopeo "encrypt ${INFO[qwen3,name]} >= ${T_ENCRYPT_BASE}x skopeo" "${S[ratio]}" ge "$T_ENCRYPT_BASE"
    fi
    echo
    echo "targets (a MISS does not fail the script):"
    for i in "${!tk[@]}"; do
        local unit=x
        [[ ${tk[i]} != ours_peak_rss ]] || unit=" MiB"
        printf '  %-62s %10s  %s\n' "${tl[i]}" "${tv[i]}$unit" "${tr[i]}"
    done

    # RESULT lines
    echo
    echo "RESULT status=${partial:-complete}"
    echo "RESULT nproc=$(nproc)"
    echo "RESULT runs=$RUNS"
    echo "RESULT loadavg_start=${LOAD_START%% *}"
    echo "RESULT loadavg_end=${LOAD_END%% *}"
    echo "RESULT sha256_single_core_mbps_start=${SHA_START:-NA}"
    echo "RESULT sha256_single_core_mbps_end=${SHA_END:-NA}"
    echo "RESULT sha256_single_core_mbps=$sha"
    echo "RESULT aes256ctr_single_core_mbps_start=${AES_START:-NA}"
    echo "RESULT aes256ctr_single_core_mbps_end=${AES_END:-NA}"
    echo "RESULT aes256ctr_single_core_mbps=${aes:-NA}"
    echo "RESULT registry_ingest_mbps=${INFO[ingest_mbps]:-NA}"
    echo "RESULT modelcrypt_stale=$([[ -n $STALE_BINARY ]] && echo yes || echo no)"
    for s in qwen3 shards; do
        [[ -n ${INFO[$s,files]:-} ]] || continue
        echo "RESULT ${s}_name=${INFO[$s,name]}"
        echo "RESULT ${s}_bytes=${INFO[$s,bytes]}"
        echo "RESULT ${s}_files=${INFO[$s,files]}"
        echo "RESULT ${s}_pack_s=${INFO[$s,pack_s]}"
    done
    [[ -z ${INFO[shards,encrypt_s]:-} ]] || echo "RESULT shards_encrypt_skopeo_setup_s=${INFO[shards,encrypt_s]}"
    [[ -z ${INFO[interop]:-} ]] || echo "RESULT interop_skopeo_decrypts_ours=${INFO[interop]}"
    for p in "${PHASES_DONE[@]}"; do
        [[ $p != slowlink_* ]] || continue # below, three sides
        stats "$p" "$sha"
        echo "RESULT ${p}_bytes=${R[$p,bytes]}"
        echo "RESULT ${p}_ours_runs_s=${R[$p,ours]// /,}"
        echo "RESULT ${p}_baseline_runs_s=${R[$p,base]// /,}"
        echo "RESULT ${p}_ours_median_s=${S[om]}"
        echo "RESULT ${p}_ours_mbps=${S[omb]}"
        echo "RESULT ${p}_ours_x_sha256=${S[xsha]}"
        echo "RESULT ${p}_baseline_median_s=${S[bm]}"
        echo "RESULT ${p}_baseline_mbps=${S[bmb]}"
        echo "RESULT ${p}_ratio_ours_over_baseline=${S[ratio]}"
        echo "RESULT ${p}_ours_peak_rss_mib=${S[orss]}"
        echo "RESULT ${p}_baseline_peak_rss_mib=${S[brss]}"
    done
    if done_phase slowlink_r4; then slowlink_results "$sha"; fi
    for i in "${!tk[@]}"; do
        echo "RESULT target_${tk[i]}=${tr[i]}"
    done

    if [[ $MARKDOWN == 1 ]]; then
        echo
        markdown "$sha" "$aes"
    fi
}

fmt_s() { awk -v s="$1" 'BEGIN {printf(s < 10 ? "%.2f s" : "%.1f s", s)}'; }
fmt_rate() { awk -v r="$1" 'BEGIN {printf(r < 100 ? "%.1f MB/s" : "%.0f MB/s", r)}'; }

markdown() {
    local sha=$1 aes=$2 p t
    echo "RUNS=$RUNS in alternating order, medians; $(nproc) vCPU, loadavg ${LOAD_START%% *} at start, ${LOAD_END%% *} at end; one core: SHA-256 $(fmt_rate "$sha"), AES-256-CTR $(fmt_rate "$aes")."
    echo
    echo "| | ours | skopeo (+ tar) | ours/skopeo | ours / SHA-256 | our peak RSS (skopeo's) | target |"
    echo "|---|---|---|---|---|---|---|"
    for p in "${PHASES_DONE[@]}"; do
        stats "$p" "$sha"
        t=""
        case $p in
        qwen3_pull_enc) t="≥ ${T_QWEN_ENC_SHA}x SHA-256: $(verdict "${S[xsha]}" ge "$T_QWEN_ENC_SHA"); ≥ ${T_QWEN_ENC_BASE}x: $(verdict "${S[ratio]}" ge "$T_QWEN_ENC_BASE")" ;;
        shards_pull_*) t="≥ ${T_SHARDS_SHA}x SHA-256: $(verdict "${S[xsha]}" ge "$T_SHARDS_SHA")" ;;
        qwen3_encrypt) t="≥ ${T_ENCRYPT_BASE}x: $(verdict "${S[ratio]}" ge "$T_ENCRYPT_BASE")" ;;
        esac
        t+="${t:+; }RSS ≤ $T_RSS_MIB MiB: $(verdict "${S[orss]}" le "$T_RSS_MIB")"
        printf '| %s (%s GB) | %s, %s | %s, %s | **%sx** | %s | %s MiB (%s MiB) | %s |\n' \
            "${R[$p,title]}" "$(gb "${R[$p,bytes]}")" "$(fmt_s "${S[om]}")" "$(fmt_rate "${S[omb]}")" \
            "$(fmt_s "${S[bm]}")" "$(fmt_rate "${S[bmb]}")" "${S[ratio]}" "${S[xsha]}" \
            "$(awk -v m="${S[orss]}" 'BEGIN {printf "%.0f", m}')" \
            "$(awk -v m="${S[brss]}" 'BEGIN {printf "%.0f", m}')" "$t"
    done
    if done_phase slowlink_r4; then
        echo
        echo "slowlink rows: the registry behind bench/slowlink.py on ${INFO[slowlink,host]}${INFO[slowlink,host_note]:+ (${INFO[slowlink,host_note]})}, $(slowlink_cap) per connection and $SLOWLINK_RTT_MS ms per request; both rows share the baseline's runs. Parallel ranges speed-up: **$(slowlink_speedup)x** (4 vs 1); one connection at the cap needs $(slowlink_floor) s."
    fi
}

# ------------------------------------------------------------------------- main

main() {
    parse_args "$@"
    ((EUID == 0)) || die "run as root (apt-get, mount)"
    install_prereqs
    ensure_modelcrypt
    mkdir -p "$WORK"
    exec 9>"$WORK/.lock"
    flock -n 9 || die "another bench is running in $WORK"
    LOCKED=1
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    # Leftovers of a run that was killed hard.
    stale_slowlink
    stale_registry
    umount_tmpfs
    rm -rf "$WORK/registry" "$LOG_DIR"
    mkdir -p "$LOG_DIR" "$WORK/model"
    preflight

    LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
    log "loadavg at start: $LOAD_START"
    log "measuring one core's SHA-256 and AES-256-CTR (openssl speed, 3 s each)"
    SHA_START=$(openssl_rate sha256) || die "could not parse openssl speed's sha256 output"
    AES_START=$(openssl_rate aes-256-ctr) || die "could not parse openssl speed's aes-256-ctr output"

    make_keys "$PRIV"
    mount_tmpfs "$TMPFS_SIZE"

    local s
    for s in "${SEL[@]}"; do "run_$s"; done

    log "measuring one core's SHA-256 and AES-256-CTR again"
    SHA_END=$(openssl_rate sha256) || die "could not parse openssl speed's sha256 output"
    AES_END=$(openssl_rate aes-256-ctr) || die "could not parse openssl speed's aes-256-ctr output"
    LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
    log "loadavg at end: $LOAD_END"
    report
}

main "$@"
