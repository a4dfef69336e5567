#!/usr/bin/env bash
# encrypted-bench.sh: how fast `modelcrypt` encrypts a model for a JWE recipient and pulls it back
# decrypted into a tmpfs, next to skopeo doing the same. Like pull-bench.sh (whose functions it
# sources) this is a benchmark, not a test: it prints numbers and fails only if skopeo fails, a
# delivery has the wrong bytes, or an "encrypted" artifact has a plain layer. If our side fails
# (before the key module lands, `encrypt --recipient jwe:` and `pull --decryption-key` stop at a
# key-parsing error), it still runs skopeo's side and prints `ours: unavailable (<error>)`.
#
# What it does, in one run (as root, Debian 12):
#   1. installs what is missing, makes or reuses the synthetic Qwen3-0.6B-shaped model, starts a
#      throwaway registry on a free 127.0.0.1 port (all as pull-bench.sh does);
#   2. makes an RSA 4096 key pair with `modelcrypt keygen --type rsa`, or with openssl if that
#      fails (the output says which);
#   3. pushes the model with `modelcrypt pack --oci-media-types --reproducible`: one
#      `application/vnd.oci.image.layer.v1.tar` layer per file, the only layer type skopeo
#      encrypts (shared/docs/ocicrypt.md §7);
#   4. RUNS times in alternating order, times encrypting every layer, registry to registry, into a
#      fresh repository per run:
#        ours:   modelcrypt encrypt bench/qwen3:oci bench/enc-ours-$i:v1 --recipient jwe:PUB
#        skopeo: skopeo copy --encryption-key jwe:PUB bench/qwen3:oci bench/enc-skopeo-$i:v1
#      and checks each result's manifest (every layer `+encrypted`, with a JWE key annotation);
#   5. mounts a tmpfs, checks once that each side's decrypting pull of run 1's artifact delivers
#      the source's bytes, then RUNS times in alternating order times
#        ours:     modelcrypt pull bench/enc-ours-1:v1 --to TMPFS/ours/qwen3 --decryption-key PRIV
#        baseline: skopeo copy --decryption-key PRIV bench/enc-skopeo-1:v1 dir:TMPFS/skopeo-dir,
#                  then tar -xf every layer blob
#      (if only our encrypt is unavailable, ours pulls skopeo's artifact instead, and says so);
#   6. checks interoperability once, untimed, where our side works: modelcrypt decrypts skopeo's
#      artifact, and skopeo decrypts ours;
#   7. measures one core's SHA-256 and AES-256-CTR rates with `openssl speed`;
#   8. prints a table and `RESULT key=value` lines (grep '^RESULT' for scripts; NA = not measured).
#
# How to read it: MB/s is 10^6 bytes of the whole model (all files, plaintext) per wall-clock
# second, median over the runs; "speed ours/skopeo" is our MB/s over skopeo's (above 1: ours is
# faster). Every encrypted byte is hashed at least twice with SHA-256 (the ocicrypt HMAC and the
# blob digest of the ciphertext; a verifying encrypt also hashes the source, a third pass) and goes
# through AES-256-CTR, several times faster than SHA-256 here. So if one core does all the work on
# the big weights layer, an encrypted pull tops out near SHA-256/2 and an encrypt near SHA-256/3;
# spreading the passes over cores can beat that. "of SHA-256" is our median rate over the
# single-core SHA-256 rate, to read against those figures.
# Encrypting writes 1.5 GB into the registry's storage per run (disk, through the page cache), the
# same for both tools. Everything else is in RAM, so the numbers measure CPU and memory bandwidth;
# other load on the machine (see loadavg in the output) makes them slower and noisier.
#
# What skopeo 1.9.3 (Debian 12) does with this artifact, seen in the "encrypted by" lines: it
# encrypts every layer byte for byte, as `…v1.tar+encrypted` of the same size as ours
# (containers/image does not recompress layers when the config is not an image config); it keeps
# the layer annotations but drops the manifest's `artifactType` when it rewrites the manifest.
# Decrypting to dir: stores the plain layers under their plain digests, so the baseline untars
# them as in pull-bench.sh.
#
# Knobs (environment), as for pull-bench.sh; do not run the two scripts at the same time:
#   RUNS=5  BENCH_WORKDIR=/var/tmp/modelcrypt-bench  MODELCRYPT=<repo>/target/release/modelcrypt
#   KEEP=1 (keep model, registry storage, logs and keys)  TMPFS_SIZE=8g
# Logs go to $BENCH_WORKDIR/logs-encrypted, keys to $BENCH_WORKDIR/keys.
#
# Flags of modelcrypt it relies on: pack --oci-media-types --reproducible --plain-http;
# keygen --type rsa --out; encrypt --recipient jwe:FILE; pull --to --decryption-key --no-progress.

set -euo pipefail
export LC_ALL=C

# shellcheck source-path=SCRIPTDIR source=pull-bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/pull-bench.sh"

LOG_DIR=$WORK/logs-encrypted
KEY_DIR=$WORK/keys
PRIV=$KEY_DIR/priv.pem
PUB=$PRIV.pub

REG_PORT=""      # the registry's port, once started
BASE=""          # docker://127.0.0.1:PORT/bench
KEYS_FROM=""     # which tool made the key pair
BAD=0            # ours delivered wrong bytes or a plain layer: report, then exit 1

# Per-run seconds ("-" where not measured) and peak RSS maxima (KiB).
ENC_ORDER=() ENC_OURS=() ENC_SKOPEO=()
PULL_ORDER=() PULL_OURS=() PULL_BASE=()
ENC_OURS_RSS=0 ENC_SKOPEO_RSS=0 PULL_OURS_RSS=0 PULL_SKOPEO_RSS=0

OURS_ENC_ERR=""  # non-empty: our encrypt is unavailable, and why ("FAILED: …" if it was wrong)
OURS_PULL_ERR="" # the same for our decrypting pull
OURS_PULL_REF="" # what ours pulls: its own run-1 artifact, or skopeo's if our encrypt failed
ENC_OURS_SUMMARY="" ENC_SKOPEO_SUMMARY=""
INTEROP_OURS_OF_SKOPEO="not run" INTEROP_SKOPEO_OF_OURS="not run"

log() { printf '[encrypted-bench] %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------- setup

encrypted_cleanup() {
    local rc=$?
    set +e
    if [[ $KEEP != 1 ]]; then rm -rf "$KEY_DIR"; fi
    (exit "$rc")
    cleanup # pull-bench.sh's: registry, tmpfs, files; exits with $?
}

check_encrypt_modelcrypt() {
    if [[ ! -x $MC ]]; then
        log "modelcrypt binary not found at $MC"
        log "build it with:  (cd $REPO_ROOT && cargo build --release)"
        log "or point MODELCRYPT=/path/to/modelcrypt at one"
        exit 1
    fi
    local flag help
    help=$("$MC" pack --help 2>&1) || die "'$MC pack --help' failed: $help"
    for flag in --oci-media-types --reproducible --plain-http; do
        [[ $help == *"$flag"* ]] || die "'$MC pack' has no $flag flag (rebuild it?)"
    done
    help=$("$MC" pull --help 2>&1) || die "'$MC pull --help' failed: $help"
    for flag in --to --plain-http --no-progress; do
        [[ $help == *"$flag"* ]] || die "'$MC pull' has no $flag flag"
    done
    # encrypt, keygen and pull --decryption-key are not required: without them ours is reported
    # as unavailable, with their error message.
}

# first_error LOG: the first line of a failed command's message (the first line that says error,
# fatal or fail, else the first non-empty line).
first_error() {
    local line
    line=$(grep -m1 -iE 'error|fatal|fail' "$1" || true)
    [[ -n $line ]] || line=$(grep -m1 . "$1" || true)
    printf '%s\n' "${line:-no output}"
}

# timed LOG CMD...: run CMD with its output in LOG and its peak RSS in LOG.rss. Sets RUN_S (wall
# seconds) and RUN_RSS_KIB; returns CMD's status (unlike run_logged, never exits).
timed() {
    local logf=$1 t0 rc=0
    shift
    t0=$(now_us)
    /usr/bin/time -f %M -o "$logf.rss" "$@" >"$logf" 2>&1 || rc=$?
    RUN_S=$(us_to_s $(($(now_us) - t0)))
    RUN_RSS_KIB=$(tail -n 1 "$logf.rss")
    return "$rc"
}

max_into() { # max_into VAR VALUE
    if (($2 > ${!1})); then printf -v "$1" '%s' "$2"; fi
}

# ------------------------------------------------------------------------- keys

# keys_ok: PRIV is a PKCS#8 PEM private key with mode 0600 and PUB the SPKI PEM of its public
# half, as `modelcrypt keygen --type rsa` promises. Prints what is wrong as `error: …`.
keys_ok() {
    local derived
    if [[ $(stat -c %a "$PRIV" 2>/dev/null) != 600 ]]; then
        echo "error: $PRIV is not mode 0600"
    elif [[ $(head -n 1 "$PRIV") != "-----BEGIN PRIVATE KEY-----" ]]; then
        echo "error: $PRIV is not PKCS#8 PEM"
    elif [[ $(head -n 1 "$PUB") != "-----BEGIN PUBLIC KEY-----" ]]; then
        echo "error: $PUB is not SPKI PEM"
    elif ! derived=$(openssl pkey -in "$PRIV" -pubout 2>&1); then
        echo "error: openssl cannot read $PRIV: $derived"
    elif [[ $derived != "$(openssl pkey -pubin -in "$PUB" 2>&1)" ]]; then
        echo "error: $PUB is not $PRIV's public key"
    else
        return 0
    fi
    return 1
}

# make_keys: a fresh RSA 4096 pair at PRIV and PUB. Sets KEYS_FROM.
make_keys() {
    local logf=$LOG_DIR/keygen.log
    rm -rf "$KEY_DIR"
    mkdir -p "$KEY_DIR"
    chmod 0700 "$KEY_DIR"
    if "$MC" keygen --type rsa --out "$PRIV" >"$logf" 2>&1 && keys_ok >>"$logf"; then
        KEYS_FROM="modelcrypt keygen"
    else
        KEYS_FROM="openssl (modelcrypt keygen failed: $(first_error "$logf"))"
        rm -f "$PRIV" "$PUB"
        (
            umask 077
            openssl genrsa 4096 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out "$PRIV"
        )
        openssl pkey -in "$PRIV" -pubout -out "$PUB"
        chmod 0644 "$PUB"
        keys_ok >&2 || die "openssl's key pair failed the check"
    fi
    log "keys: $KEYS_FROM"
}

# --------------------------------------------------------------------- encrypting

# encrypted_summary REPO TAG: one line about an encrypted manifest in the registry. Fails if a
# layer is not `+encrypted` or lacks the JWE key annotation.
encrypted_summary() {
    curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "http://127.0.0.1:$REG_PORT/v2/$1/manifests/$2" |
        "$PY" -I -S -c 'import json, sys
m = json.load(sys.stdin)
layers = m["layers"]
types = sorted({l["mediaType"] for l in layers})
jwe = sum("org.opencontainers.image.enc.keys.jwe" in l.get("annotations", {}) for l in layers)
print("%d layers, %d bytes, %s, %d with a JWE key; config %s; artifactType %s" % (
    len(layers), sum(l["size"] for l in layers), " ".join(types), jwe,
    m["config"]["mediaType"], m.get("artifactType", "absent")))
sys.exit(0 if jwe == len(layers) and all(t.endswith("+encrypted") for t in types) else 1)'
}

# encrypt_ours I: time our encrypt of the source into bench/enc-ours-I:v1, unless it already
# failed in an earlier run.
encrypt_ours() {
    local i=$1 logf=$LOG_DIR/encrypt-ours-$1.log summary
    if [[ -n $OURS_ENC_ERR ]]; then ENC_OURS+=(-); return; fi
    if ! timed "$logf" "$MC" --plain-http encrypt "$BASE/qwen3:oci" "$BASE/enc-ours-$i:v1" \
        --recipient "jwe:$PUB"; then
        OURS_ENC_ERR=$(first_error "$logf")
        log "ours: encrypt unavailable ($OURS_ENC_ERR); see $logf"
        ENC_OURS+=(-)
        return
    fi
    if ! summary=$(encrypted_summary "bench/enc-ours-$i" v1); then
        OURS_ENC_ERR="FAILED: wrote a manifest with a plain layer: $summary"
        log "ours: encrypt $OURS_ENC_ERR"
        BAD=1
        ENC_OURS+=(-)
        return
    fi
    ((i > 1)) || ENC_OURS_SUMMARY=$summary
    ENC_OURS+=("$RUN_S")
    max_into ENC_OURS_RSS "$RUN_RSS_KIB"
}

# encrypt_skopeo I: time skopeo's encrypt of the source into bench/enc-skopeo-I:v1.
encrypt_skopeo() {
    local i=$1 logf=$LOG_DIR/encrypt-skopeo-$1.log summary
    if ! timed "$logf" skopeo --insecure-policy copy --src-tls-verify=false --dest-tls-verify=false \
        --encryption-key "jwe:$PUB" "$BASE/qwen3:oci" "$BASE/enc-skopeo-$i:v1"; then
        tail -n 30 "$logf" >&2
        die "skopeo could not encrypt the artifact: $(first_error "$logf")"
    fi
    summary=$(encrypted_summary "bench/enc-skopeo-$i" v1) ||
        die "skopeo left a layer unencrypted: $summary"
    ((i > 1)) || ENC_SKOPEO_SUMMARY=$summary
    ENC_SKOPEO+=("$RUN_S")
    max_into ENC_SKOPEO_RSS "$RUN_RSS_KIB"
}

# ------------------------------------------------------------------------ pulling

# pull_ours REF LOG: our decrypting pull of REF into TMPFS/ours/qwen3 (RUN_S, RUN_RSS_KIB).
pull_ours() {
    rm -rf "$TMPFS/ours"
    mkdir -p "$TMPFS/ours"
    timed "$2" "$MC" --plain-http pull "$1" --to "$TMPFS/ours/qwen3" \
        --decryption-key "$PRIV" --no-progress
}

# delivery_ok SRC OUT WHO: check_delivery without exiting; on failure sets DELIVERY_ERR.
delivery_ok() {
    local errf=$LOG_DIR/check-$3.err
    if (check_delivery "$@") 2>"$errf"; then
        cat "$errf" >&2
        return 0
    fi
    cat "$errf" >&2
    DELIVERY_ERR=$(tail -n 1 "$errf")
    DELIVERY_ERR=${DELIVERY_ERR#*error: }
    return 1
}

# check_pulls: the untimed first decrypting pulls, which check the bytes and warm the caches.
check_pulls() {
    local logf=$LOG_DIR/pull-ours-check.log
    OURS_PULL_REF=$BASE/enc-ours-1:v1
    if [[ -n $OURS_ENC_ERR ]]; then
        OURS_PULL_REF=$BASE/enc-skopeo-1:v1
        log "ours: our encrypt is unavailable, so ours pulls skopeo's artifact"
    fi
    if ! pull_ours "$OURS_PULL_REF" "$logf"; then
        OURS_PULL_ERR=$(first_error "$logf")
        log "ours: decrypting pull unavailable ($OURS_PULL_ERR); see $logf"
    elif ! delivery_ok "$MODEL_DIR" "$TMPFS/ours/qwen3" ours; then
        OURS_PULL_ERR="FAILED: delivered wrong bytes: $DELIVERY_ERR"
        BAD=1
    fi
    clear_tmpfs

    time_baseline "$BASE/enc-skopeo-1:v1" "$TMPFS/baseline-out" "$LOG_DIR/pull-baseline-check.log" \
        --decryption-key "$PRIV"
    check_delivery "$MODEL_DIR" "$TMPFS/baseline-out" baseline
    clear_tmpfs
}

# check_interop: each tool decrypts the other's artifact once, where ours works.
check_interop() {
    local logf=$LOG_DIR/interop-ours-of-skopeo.log
    if [[ -n $OURS_PULL_ERR ]]; then
        INTEROP_OURS_OF_SKOPEO="not run (our pull is unavailable)"
    elif [[ $OURS_PULL_REF == *enc-skopeo-1* ]]; then
        INTEROP_OURS_OF_SKOPEO=ok # check_pulls just did it
    elif ! pull_ours "$BASE/enc-skopeo-1:v1" "$logf"; then
        INTEROP_OURS_OF_SKOPEO="FAILED ($(first_error "$logf"))"
    elif ! delivery_ok "$MODEL_DIR" "$TMPFS/ours/qwen3" interop-ours; then
        INTEROP_OURS_OF_SKOPEO="FAILED ($DELIVERY_ERR)"
    else
        INTEROP_OURS_OF_SKOPEO=ok
    fi
    clear_tmpfs

    logf=$LOG_DIR/interop-skopeo-of-ours.log
    if [[ -n $OURS_ENC_ERR ]]; then
        INTEROP_SKOPEO_OF_OURS="not run (our encrypt is unavailable)"
    # time_baseline exits on failure: the subshell keeps this script going.
    elif ! (time_baseline "$BASE/enc-ours-1:v1" "$TMPFS/baseline-out" "$logf" \
        --decryption-key "$PRIV") 2>/dev/null; then
        INTEROP_SKOPEO_OF_OURS="FAILED ($(first_error "$logf"))"
    elif ! delivery_ok "$MODEL_DIR" "$TMPFS/baseline-out" interop-skopeo; then
        INTEROP_SKOPEO_OF_OURS="FAILED ($DELIVERY_ERR)"
    else
        INTEROP_SKOPEO_OF_OURS=ok
    fi
    clear_tmpfs
    log "interop: modelcrypt decrypts skopeo's: $INTEROP_OURS_OF_SKOPEO; skopeo decrypts ours: $INTEROP_SKOPEO_OF_OURS"
}

# ------------------------------------------------------------------------- main

aes_ctr_rate() { # one core's AES-256-CTR in MB/s, as sha256_rate
    openssl speed -evp aes-256-ctr -bytes 1048576 -seconds 3 2>/dev/null |
        awk 'tolower($1) == "aes-256-ctr" && $NF ~ /k$/ {sub(/k$/, "", $NF); r = $NF / 1000}
             END {if (r == "") exit 1; printf "%.1f\n", r}'
}

encrypted_main() {
    [[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, not '$RUNS'"
    ((EUID == 0)) || die "run as root (apt-get, mount)"
    install_prereqs
    check_encrypt_modelcrypt
    trap encrypted_cleanup EXIT
    trap 'exit 130' INT TERM
    mkdir -p "$WORK" "$LOG_DIR" "$TMPFS"

    local load_start
    load_start=$(cut -d' ' -f1 /proc/loadavg)
    log "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"

    make_model "$MODEL_DIR" "$QWEN3_WEIGHTS"
    local model_bytes
    model_bytes=$(dir_bytes "$MODEL_DIR")

    REG_PORT=$(free_port)
    start_registry "$REG_PORT"
    BASE=docker://127.0.0.1:$REG_PORT/bench

    log "pushing with modelcrypt pack --oci-media-types --reproducible"
    local t0 pack_s
    t0=$(now_us)
    run_logged "$LOG_DIR/pack.log" "$MC" pack "$MODEL_DIR" "$BASE/qwen3:oci" \
        --oci-media-types --reproducible --plain-http
    pack_s=$(us_to_s $(($(now_us) - t0)))

    make_keys

    local i who
    for ((i = 1; i <= RUNS; i++)); do
        if ((i % 2)); then ENC_ORDER+=("ours,skopeo"); else ENC_ORDER+=("skopeo,ours"); fi
        for who in ${ENC_ORDER[-1]//,/ }; do
            if [[ $who == ours ]]; then encrypt_ours "$i"; else encrypt_skopeo "$i"; fi
            if [[ $who == skopeo || -z $OURS_ENC_ERR ]]; then log "run $i encrypt $who: $RUN_S s"; fi
        done
    done
    log "ours' encrypted artifact: ${ENC_OURS_SUMMARY:-none}"
    log "skopeo's encrypted artifact: $ENC_SKOPEO_SUMMARY"

    if mountpoint -q "$TMPFS"; then umount "$TMPFS"; fi
    mount -t tmpfs -o "size=$TMPFS_SIZE,mode=0700" modelcrypt-bench "$TMPFS"

    check_pulls
    check_interop

    for ((i = 1; i <= RUNS; i++)); do
        if ((i % 2)); then PULL_ORDER+=("ours,baseline"); else PULL_ORDER+=("baseline,ours"); fi
        for who in ${PULL_ORDER[-1]//,/ }; do
            if [[ $who == baseline ]]; then
                time_baseline "$BASE/enc-skopeo-1:v1" "$TMPFS/baseline-out" \
                    "$LOG_DIR/pull-baseline-$i.log" --decryption-key "$PRIV"
                PULL_BASE+=("$RUN_S")
                max_into PULL_SKOPEO_RSS "$RUN_RSS_KIB"
                log "run $i pull baseline: $RUN_S s"
            elif [[ -n $OURS_PULL_ERR ]]; then
                PULL_OURS+=(-)
            elif pull_ours "$OURS_PULL_REF" "$LOG_DIR/pull-ours-$i.log"; then
                PULL_OURS+=("$RUN_S")
                max_into PULL_OURS_RSS "$RUN_RSS_KIB"
                log "run $i pull ours: $RUN_S s"
            else
                OURS_PULL_ERR=$(first_error "$LOG_DIR/pull-ours-$i.log")
                log "ours: decrypting pull failed in run $i ($OURS_PULL_ERR)"
                PULL_OURS+=(-)
            fi
            clear_tmpfs
        done
    done

    log "measuring single-core SHA-256 and AES-256-CTR (openssl speed, 3 s each)"
    local sha_mbps aes_mbps
    sha_mbps=$(sha256_rate) || die "could not parse openssl speed output (sha256)"
    aes_mbps=$(aes_ctr_rate) || die "could not parse openssl speed output (aes-256-ctr)"

    encrypted_report "$model_bytes" "$pack_s" "$sha_mbps" "$aes_mbps" "$load_start"
    if ((BAD)); then die "ours delivered wrong bytes or plain layers (see above)"; fi
}

# ----------------------------------------------------------------------- report

declare -gA ST # per phase (enc, pull): om, omb (ours median s, MB/s), sm, smb, ratio, frac

kib_to_mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
rss_mib() { if (($1)); then kib_to_mib "$1"; else echo NA; fi; }

# phase_stats PHASE ERR OURS_ARRAY OTHER_ARRAY MODEL_BYTES SHA_MBPS: fills ST[PHASE_*]; ours is NA
# when ERR is set.
phase_stats() {
    local p=$1 err=$2 model_bytes=$5 sha=$6
    local -n ours_runs=$3 other_runs=$4
    ST[${p}_sm]=$(median "${other_runs[@]}")
    ST[${p}_smb]=$(mbps "$model_bytes" "${ST[${p}_sm]}")
    ST[${p}_om]=NA ST[${p}_omb]=NA ST[${p}_ratio]=NA ST[${p}_frac]=NA
    if [[ -z $err ]]; then
        ST[${p}_om]=$(median "${ours_runs[@]}")
        ST[${p}_omb]=$(mbps "$model_bytes" "${ST[${p}_om]}")
        ST[${p}_ratio]=$(ratio "${ST[${p}_omb]}" "${ST[${p}_smb]}")
        ST[${p}_frac]=$(ratio "${ST[${p}_omb]}" "$sha")
    fi
}

# print_phase PHASE TITLE ERR OURS_ARRAY OTHER_ARRAY ORDER_ARRAY OTHER_LABEL OURS_RSS OTHER_RSS
print_phase() {
    local p=$1 title=$2 err=$3 other=$7 ours_rss=$8 other_rss=$9 i
    local -n ours_runs=$4 other_runs=$5 run_order=$6
    echo "$title"
    printf '%-4s %-16s %10s %12s\n' run order ours_s "${other}_s"
    for ((i = 0; i < RUNS; i++)); do
        printf '%-4s %-16s %10s %12s\n' "$((i + 1))" "${run_order[i]}" "${ours_runs[i]}" "${other_runs[i]}"
    done
    if [[ $err == FAILED:* ]]; then
        echo "ours: FAILED (${err#FAILED: })"
    elif [[ -n $err ]]; then
        echo "ours: unavailable ($err)"
    else
        printf '%-28s %10s s  %8s MB/s  (%s of SHA-256)\n' "median ours" "${ST[${p}_om]}" \
            "${ST[${p}_omb]}" "${ST[${p}_frac]}"
    fi
    printf '%-28s %10s s  %8s MB/s\n' "median $other" "${ST[${p}_sm]}" "${ST[${p}_smb]}"
    local speed=${ST[${p}_ratio]} rss
    [[ $speed == NA ]] || speed+=x
    printf '%-28s %10s\n' "speed ours/$other" "$speed"
    rss=$(rss_mib "$ours_rss")
    [[ $rss == NA ]] || rss+=" MiB"
    printf '%-28s %10s (skopeo: %s MiB)\n' "peak RSS ours (max of runs)" "$rss" "$(rss_mib "$other_rss")"
}

# status ERR: ok, failed or unavailable, for RESULT lines.
status() {
    case $1 in "") echo ok ;; FAILED:*) echo failed ;; *) echo unavailable ;; esac
}

# outcome TEXT: ok, failed or NA (not run), for RESULT lines.
outcome() {
    case $1 in ok) echo ok ;; FAILED*) echo failed ;; *) echo NA ;; esac
}

# encrypted_report MODEL_BYTES PACK_S SHA_MBPS AES_MBPS LOAD_START
encrypted_report() {
    local model_bytes=$1 pack_s=$2 sha_mbps=$3 aes_mbps=$4 load_start=$5 load_end i p
    load_end=$(cut -d' ' -f1 /proc/loadavg)
    phase_stats enc "$OURS_ENC_ERR" ENC_OURS ENC_SKOPEO "$model_bytes" "$sha_mbps"
    phase_stats pull "$OURS_PULL_ERR" PULL_OURS PULL_BASE "$model_bytes" "$sha_mbps"

    echo
    echo "modelcrypt encrypted benchmark: Qwen3-0.6B-shaped model, OCI tar layers, JWE (RSA 4096), loopback registry"
    echo "machine: nproc=$(nproc), $(openssl version | cut -d' ' -f1-2), $(skopeo --version), loadavg ${load_start} at start, ${load_end} at end"
    echo "model: $model_bytes bytes in $(find "$MODEL_DIR" -type f | wc -l) files (weights $QWEN3_WEIGHTS); pack took $pack_s s"
    echo "keys: $KEYS_FROM"
    echo "encrypted by ours:   ${ENC_OURS_SUMMARY:-none}"
    echo "encrypted by skopeo: $ENC_SKOPEO_SUMMARY"
    if [[ $OURS_PULL_REF == *enc-skopeo-1* ]]; then
        echo "note: ours pulls skopeo's encrypted artifact (our encrypt is unavailable)"
    fi
    echo "note: the baseline's dir: copy also goes to tmpfs, which favours it"
    echo
    print_phase enc "encrypt, registry -> registry (every layer, one jwe: recipient)" \
        "$OURS_ENC_ERR" ENC_OURS ENC_SKOPEO ENC_ORDER skopeo "$ENC_OURS_RSS" "$ENC_SKOPEO_RSS"
    echo
    print_phase pull "decrypting pull, registry -> tmpfs (baseline: skopeo copy to dir:, then tar -xf)" \
        "$OURS_PULL_ERR" PULL_OURS PULL_BASE PULL_ORDER baseline "$PULL_OURS_RSS" "$PULL_SKOPEO_RSS"
    echo
    printf '%-28s %10s MB/s\n' "SHA-256, one core" "$sha_mbps"
    printf '%-28s %10s MB/s\n' "AES-256-CTR, one core" "$aes_mbps"
    echo "interop: modelcrypt decrypts skopeo's artifact: $INTEROP_OURS_OF_SKOPEO"
    echo "interop: skopeo decrypts modelcrypt's artifact: $INTEROP_SKOPEO_OF_OURS"
    echo

    echo "RESULT nproc=$(nproc)"
    echo "RESULT loadavg_start=$load_start"
    echo "RESULT loadavg_end=$load_end"
    echo "RESULT model_bytes=$model_bytes"
    echo "RESULT weights_bytes=$QWEN3_WEIGHTS"
    echo "RESULT runs=$RUNS"
    echo "RESULT pack_s=$pack_s"
    echo "RESULT keys_from=${KEYS_FROM%% *}"
    echo "RESULT ours_encrypt=$(status "$OURS_ENC_ERR")"
    echo "RESULT ours_pull=$(status "$OURS_PULL_ERR")"
    for ((i = 0; i < RUNS; i++)); do
        echo "RESULT encrypt_ours_run$((i + 1))_s=${ENC_OURS[i]/#-/NA}"
        echo "RESULT encrypt_skopeo_run$((i + 1))_s=${ENC_SKOPEO[i]}"
    done
    p=enc
    echo "RESULT encrypt_ours_median_s=${ST[${p}_om]}"
    echo "RESULT encrypt_ours_median_mbps=${ST[${p}_omb]}"
    echo "RESULT encrypt_skopeo_median_s=${ST[${p}_sm]}"
    echo "RESULT encrypt_skopeo_median_mbps=${ST[${p}_smb]}"
    echo "RESULT encrypt_speed_ratio_ours_over_skopeo=${ST[${p}_ratio]}"
    echo "RESULT encrypt_ours_fraction_of_sha256=${ST[${p}_frac]}"
    echo "RESULT encrypt_ours_peak_rss_mib=$(rss_mib "$ENC_OURS_RSS")"
    echo "RESULT encrypt_skopeo_peak_rss_mib=$(rss_mib "$ENC_SKOPEO_RSS")"
    for ((i = 0; i < RUNS; i++)); do
        echo "RESULT pull_ours_run$((i + 1))_s=${PULL_OURS[i]/#-/NA}"
        echo "RESULT pull_baseline_run$((i + 1))_s=${PULL_BASE[i]}"
    done
    p=pull
    echo "RESULT pull_ours_median_s=${ST[${p}_om]}"
    echo "RESULT pull_ours_median_mbps=${ST[${p}_omb]}"
    echo "RESULT pull_baseline_median_s=${ST[${p}_sm]}"
    echo "RESULT pull_baseline_median_mbps=${ST[${p}_smb]}"
    echo "RESULT pull_speed_ratio_ours_over_baseline=${ST[${p}_ratio]}"
    echo "RESULT pull_ours_fraction_of_sha256=${ST[${p}_frac]}"
    echo "RESULT pull_ours_peak_rss_mib=$(rss_mib "$PULL_OURS_RSS")"
    echo "RESULT pull_skopeo_peak_rss_mib=$(rss_mib "$PULL_SKOPEO_RSS")"
    echo "RESULT sha256_single_core_mbps=$sha_mbps"
    echo "RESULT aes256ctr_single_core_mbps=$aes_mbps"
    echo "RESULT interop_ours_decrypts_skopeo=$(outcome "$INTEROP_OURS_OF_SKOPEO")"
    echo "RESULT interop_skopeo_decrypts_ours=$(outcome "$INTEROP_SKOPEO_OF_OURS")"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then encrypted_main "$@"; fi
