# shellcheck shell=bash
# lib.sh: functions for bench/bench.sh (sourced, never run). Nothing here runs on its own: the
# caller sets the globals below, then calls what it needs.
#
#   WORK     $BENCH_WORKDIR: model cache, registry storage, logs, keys, tmpfs mount point
#   MC       the modelcrypt binary;  MC_GLOBAL  extra global flags for it (an array)
#   LOG_DIR  per-command logs;  TMPFS  the tmpfs mount point
#   PY       a python3 (install_prereqs sets it)
#   REG_PORT the registry's port (start_registry sets it); SL_PORT the slowlink proxy's
#
# Every function that fails a benchmark (a tool error, wrong bytes) calls die, which exits the
# script; the caller's EXIT trap cleans up.

LOG_TAG=${LOG_TAG:-bench}
REG_PID=""
REG_PORT=""
REG_DIR=""
PY=python3
SLOWLINK_PY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/slowlink.py
SL_PID=""
SL_PORT=""
SL_FD=""

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------------------- setup

install_prereqs() {
    local -a missing=()
    command -v skopeo >/dev/null || missing+=(skopeo)
    [[ -x /usr/bin/docker-registry ]] || missing+=(docker-registry)
    [[ -x /usr/bin/time ]] || missing+=(time)
    command -v curl >/dev/null || missing+=(curl)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v python3 >/dev/null || missing+=(python3)
    command -v flock >/dev/null || missing+=(util-linux)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # The distribution's python starts faster than a pyenv shim (it runs inside the baseline's
    # timing, to list the layers).
    if [[ -x /usr/bin/python3 ]]; then PY=/usr/bin/python3; fi
}

# --------------------------------------------------------------------- the models

# random_file PATH SIZE: SIZE incompressible bytes (AES-256-CTR keystream; CTR adds no padding).
# The IV comes from the file name, so that shards differ and the registry cannot deduplicate
# them, and the same name and size always give the same bytes.
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
    {
        printf '%s' "$prefix"
        head -c "$fill" /dev/zero | tr '\0' a
        printf '%s' "$suffix"
    } >"$path.part"
    mv "$path.part" "$path"
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

# write_if_changed PATH: stdin into PATH, leaving PATH (and its mtime) alone if it already holds
# exactly that, so that the cached checksums stay valid.
write_if_changed() {
    local path=$1
    cat >"$path.part"
    if cmp -s "$path.part" "$path"; then rm -f "$path.part"; else mv "$path.part" "$path"; fi
}

write_configs() {
    local dir=$1
    write_if_changed "$dir/config.json" <<'EOF'
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
    write_if_changed "$dir/generation_config.json" <<'EOF'
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
    printf '# Synthetic Qwen3-0.6B-shaped model\n\nRandom weights for benchmarking; not a model.\n' |
        write_if_changed "$dir/README.md"
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
    } | write_if_changed "$dir/model.safetensors.index.json"
}

# make_model DIR SHARD_SIZE...: one size gives model.safetensors; N sizes give
# model-0000i-of-0000N.safetensors plus an index. The other files have Qwen/Qwen3-0.6B's sizes
# (shared/docs/modelpack.md §4). Files that already have the right size are kept.
make_model() {
    local dir=$1
    shift
    local n=$# i=0 size
    local -a shards=()
    mkdir -p "$dir"
    rm -f "$dir"/*.part # left by an interrupted run; pack would take them for model files
    for size in "$@"; do
        i=$((i + 1))
        if ((n == 1)); then
            shards+=(model.safetensors)
        else
            shards+=("$(printf 'model-%05d-of-%05d.safetensors' "$i" "$n")")
        fi
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

# model_sums DIR SUMS: SUMS lists `sha256  relative/path` for every file in DIR, recomputed only
# when a file is newer than SUMS (or SUMS is missing), so a cached model is hashed once.
model_sums() {
    local dir=$1 sums=$2
    if [[ -s $sums ]] && [[ -z $(find "$dir" -type f -newer "$sums" -print -quit) ]] &&
        [[ $(wc -l <"$sums") == $(find "$dir" -type f | wc -l) ]]; then
        return
    fi
    log "hashing $(basename "$dir") (cached in $sums)"
    (cd "$dir" && find . -type f -printf '%P\n' | sort | while IFS= read -r f; do
        printf '%s  %s\n' "$(openssl dgst -sha256 -r "$f" | cut -d' ' -f1)" "$f"
    done) >"$sums.part"
    mv "$sums.part" "$sums"
}

dir_bytes() { find "$1" -type f -printf '%s\n' | awk '{s += $1} END {printf "%.0f\n", s}'; }
max_file_bytes() { find "$1" -type f -printf '%s\n' | sort -n | tail -n 1; }

# check_delivery SUMS OUT WHO: every file in SUMS is in OUT with the same SHA-256, and OUT has no
# other files except the names in ALLOWED_EXTRA (modelcrypt's completion marker). Dies if not.
ALLOWED_EXTRA=(.modelcrypt-complete)
check_delivery() {
    local sums=$1 out=$2 who=$3 want f got extra n=0
    while read -r want f; do
        [[ -f $out/$f ]] || die "$who: $f is missing from $out"
        got=$(openssl dgst -sha256 -r "$out/$f" | cut -d' ' -f1)
        [[ $got == "$want" ]] || die "$who: sha256 of $f is $got, the source's is $want"
        n=$((n + 1))
    done <"$sums"
    extra=$(comm -13 <(cut -d' ' -f3- "$sums" | sort) \
        <(cd "$out" && find . -type f -printf '%P\n' | sort) |
        grep -vxF -f <(printf '%s\n' "${ALLOWED_EXTRA[@]}") | tr '\n' ' ' || true)
    [[ -z $extra ]] || die "$who: unexpected files in $out: $extra"
    log "$who: delivery verified ($n files, sha256 of each matches the source)"
}

# ------------------------------------------------------------------ the registry

free_port() {
    "$PY" -I -S -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# stale_registry: kill a registry left by an earlier run of this script that was killed with
# SIGKILL (its pid file names it; its command line must name our config file).
stale_registry() {
    local pid
    pid=$(cat "$WORK/registry.pid" 2>/dev/null) || return 0
    if [[ $pid =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
        grep -qF "docker-registry serve $WORK/registry.yml"; then
        log "stopping a registry left by an earlier run (pid $pid)"
        kill "$pid" 2>/dev/null || true
    fi
    rm -f "$WORK/registry.pid"
}

# start_registry STORAGE_DIR: a CNCF distribution registry on a free 127.0.0.1 port, storing on
# disk in STORAGE_DIR. Sets REG_PID, REG_PORT, REG_DIR.
start_registry() {
    local deadline
    REG_DIR=$1
    REG_PORT=$(free_port)
    mkdir -p "$REG_DIR" "$LOG_DIR"
    # No blob descriptor cache: registry_gc deletes blobs behind the server's back.
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
  addr: 127.0.0.1:$REG_PORT
EOF
    /usr/bin/docker-registry serve "$WORK/registry.yml" >>"$LOG_DIR/registry.log" 2>&1 &
    REG_PID=$!
    echo "$REG_PID" >"$WORK/registry.pid"
    deadline=$((SECONDS + 30))
    until curl -sf -o /dev/null "http://127.0.0.1:$REG_PORT/v2/"; do
        kill -0 "$REG_PID" 2>/dev/null || {
            tail -n 20 "$LOG_DIR/registry.log" >&2
            die "the registry exited"
        }
        ((SECONDS < deadline)) || die "registry not ready on 127.0.0.1:$REG_PORT after 30 s"
        sleep 0.1
    done
    log "registry up on 127.0.0.1:$REG_PORT (pid $REG_PID, storage $REG_DIR)"
}

stop_registry() {
    if [[ -n $REG_PID ]] && kill -0 "$REG_PID" 2>/dev/null; then
        kill "$REG_PID" 2>/dev/null || true
        wait "$REG_PID" 2>/dev/null || true # its status is 143, from the SIGTERM
    fi
    REG_PID=""
    rm -f "$WORK/registry.pid"
}

# drop_repos REPO...: delete whole repositories (bench/enc-ours-2, ...) and garbage-collect their
# blobs, to keep the registry's disk use down between encrypt runs. Only this script writes to the
# registry, and never while this runs, which is what `garbage-collect` needs.
drop_repos() {
    local r
    for r in "$@"; do rm -rf "$REG_DIR/docker/registry/v2/repositories/$r"; done
    /usr/bin/docker-registry garbage-collect "$WORK/registry.yml" >>"$LOG_DIR/gc.log" 2>&1 ||
        die "docker-registry garbage-collect failed (see $LOG_DIR/gc.log)"
}

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
print("%d layers, %d bytes, %s, %d with a JWE key; artifactType %s" % (
    len(layers), sum(l["size"] for l in layers), " ".join(types), jwe,
    m.get("artifactType", "absent")))
sys.exit(0 if jwe == len(layers) and all(t.endswith("+encrypted") for t in types) else 1)'
}

# --------------------------------------------------------------- the slow link

# listen_host: the first global IPv4 address of this machine, so that a pull through the proxy
# sees a registry on another host (modelcrypt treats a loopback registry differently); empty if
# there is none.
listen_host() {
    ip -4 -o addr show scope global 2>/dev/null | awk '{sub(/\/.*/, "", $4); print $4; exit}'
}

# stale_slowlink: kill a slowlink.py left by an earlier run that was killed with SIGKILL (its pid
# file names it; its command line must name our slowlink.py).
stale_slowlink() {
    local pid
    pid=$(cat "$WORK/slowlink.pid" 2>/dev/null) || return 0
    if [[ $pid =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
        grep -qF "$SLOWLINK_PY"; then
        log "stopping a slowlink.py left by an earlier run (pid $pid)"
        kill "$pid" 2>/dev/null || true
    fi
    rm -f "$WORK/slowlink.pid"
}

# start_slowlink HOST RATE LATENCY_MS LOG: bench/slowlink.py on a free port of HOST in front of
# the registry (REG_PORT), RATE bytes/s per connection (80M; 0: no cap), LATENCY_MS each way, its
# log in LOG. Reads its "ready PORT" line (no polling). Sets SL_PID, SL_PORT and SL_FD (its
# stdout, kept open until stop_slowlink).
start_slowlink() {
    local host=$1 rate=$2 latency=$3 logf=$4 word=""
    exec {SL_FD}< <(exec "$PY" -I "$SLOWLINK_PY" --host "$host" --port 0 --upstream "$REG_PORT" \
        --rate "$rate" --latency-ms "$latency" 2>>"$logf")
    SL_PID=$!
    echo "$SL_PID" >"$WORK/slowlink.pid"
    read -r -t 30 -u "$SL_FD" word SL_PORT || true
    if [[ $word != ready || ! $SL_PORT =~ ^[0-9]+$ ]]; then
        tail -n 20 "$logf" >&2
        die "slowlink.py did not start on $host (see $logf)"
    fi
}

# slowlink_cpu_s: the CPU seconds (user + system) the running slowlink.py has used so far.
slowlink_cpu_s() {
    awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f\n", ($14 + $15) / hz}' "/proc/$SL_PID/stat"
}

stop_slowlink() {
    if [[ -n $SL_PID ]] && kill -0 "$SL_PID" 2>/dev/null; then
        kill "$SL_PID" 2>/dev/null || true
        wait "$SL_PID" 2>/dev/null || true
    fi
    if [[ -n $SL_FD ]]; then exec {SL_FD}<&-; fi
    SL_PID="" SL_PORT="" SL_FD=""
    rm -f "$WORK/slowlink.pid"
}

# largest_blob REPO TAG: "DIGEST SIZE" of the largest layer of a manifest in the registry.
largest_blob() {
    curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "http://127.0.0.1:$REG_PORT/v2/$1/manifests/$2" |
        "$PY" -I -S -c 'import json, sys
layer = max(json.load(sys.stdin)["layers"], key=lambda l: l["size"])
print(layer["digest"], layer["size"])'
}

# ------------------------------------------------------------------------- keys

# make_keys PRIV: a fresh RSA 4096 pair from `modelcrypt keygen --type rsa` at PRIV and PRIV.pub,
# checked with openssl (PKCS#8 private key, mode 0600, SPKI public key of the same pair).
make_keys() {
    local priv=$1 pub=$1.pub derived
    rm -f "$priv" "$pub"
    mkdir -p "$(dirname "$priv")"
    chmod 0700 "$(dirname "$priv")"
    run_logged "$LOG_DIR/keygen.log" "$MC" keygen --type rsa --out "$priv"
    [[ $(stat -c %a "$priv") == 600 ]] || die "keygen: $priv is not mode 0600"
    [[ $(head -n 1 "$priv") == "-----BEGIN PRIVATE KEY-----" ]] || die "keygen: $priv is not PKCS#8 PEM"
    [[ $(head -n 1 "$pub") == "-----BEGIN PUBLIC KEY-----" ]] || die "keygen: $pub is not SPKI PEM"
    derived=$(openssl pkey -in "$priv" -pubout 2>&1) || die "openssl cannot read $priv: $derived"
    [[ $derived == "$(openssl pkey -pubin -in "$pub" 2>&1)" ]] || die "keygen: $pub is not $priv's public key"
}

# ----------------------------------------------------------------------- timing

now_us() { echo "${EPOCHREALTIME/./}"; }
us_to_s() { awk -v us="$1" 'BEGIN {printf "%.3f", us / 1e6}'; }

first_error() { # first_error LOG: the first line that looks like an error, else the first line
    local line
    line=$(grep -m1 -iE 'error|fatal|fail' "$1" || true)
    [[ -n $line ]] || line=$(grep -m1 . "$1" || true)
    printf '%s\n' "${line:-no output}"
}

# run_logged LOG CMD...: run CMD with its output in LOG; on failure show LOG and die.
run_logged() {
    local logf=$1
    shift
    "$@" >"$logf" 2>&1 || {
        tail -n 30 "$logf" >&2
        die "failed ($logf): $*"
    }
}

# timed LOG CMD...: run CMD with its output in LOG and its peak RSS in LOG.rss. Sets RUN_US (wall
# microseconds) and RUN_RSS_KIB; dies, showing LOG, if CMD fails.
timed() {
    local logf=$1 t0
    shift
    t0=$(now_us)
    /usr/bin/time -f %M -o "$logf.rss" "$@" >"$logf" 2>&1 || {
        tail -n 30 "$logf" >&2
        die "failed ($logf): $*"
    }
    RUN_US=$(($(now_us) - t0))
    RUN_RSS_KIB=$(tail -n 1 "$logf.rss")
}

# ours_pull REF DEST LOG [PULL_ARG...]: time `modelcrypt pull REF --to DEST`. Sets RUN_S and
# RUN_RSS_KIB.
ours_pull() {
    local ref=$1 dest=$2 logf=$3
    shift 3
    rm -rf "$dest"
    mkdir -p "$(dirname "$dest")"
    timed "$logf" "$MC" "${MC_GLOBAL[@]}" pull "$ref" --to "$dest" --no-progress "$@"
    RUN_S=$(us_to_s "$RUN_US")
}

# layer_blobs MANIFEST: the layer digests' hex parts (skopeo's dir: names blobs that way).
layer_blobs() {
    "$PY" -I -S -c 'import json, sys
for layer in json.load(open(sys.argv[1]))["layers"]:
    print(layer["digest"].split(":", 1)[1])' "$1"
}

# baseline_pull REF OUT LOG [SKOPEO_COPY_ARG...]: the pipeline modelcrypt replaces: skopeo copy to
# dir:TMPFS/skopeo-dir, then tar -xf every layer blob into OUT. Sets RUN_S (the copy plus the
# untars) and RUN_RSS_KIB (the largest peak RSS of skopeo and the tars). Each blob is deleted once
# it is unpacked, outside the timing, so that the staging copy and the output together never take
# more than the model plus its largest file in the tmpfs.
baseline_pull() {
    local ref=$1 out=$2 logf=$3 stage=$TMPFS/skopeo-dir total rss blob
    shift 3
    rm -rf "$stage" "$out"
    mkdir -p "$out"
    timed "$logf" skopeo --insecure-policy copy --src-tls-verify=false "$@" "$ref" "dir:$stage"
    total=$RUN_US rss=$RUN_RSS_KIB
    local t0 blobs
    t0=$(now_us)
    blobs=$(layer_blobs "$stage/manifest.json") || die "no layers in $stage/manifest.json"
    total=$((total + $(now_us) - t0))
    for blob in $blobs; do
        timed "$logf.tar" tar -xf "$stage/$blob" -C "$out"
        total=$((total + RUN_US))
        if ((RUN_RSS_KIB > rss)); then rss=$RUN_RSS_KIB; fi
        rm -f "$stage/$blob"
    done
    rm -rf "$stage"
    # shellcheck disable=SC2034 # for the caller
    RUN_S=$(us_to_s "$total")
    RUN_RSS_KIB=$rss
}

# ------------------------------------------------------------------------- tmpfs

mount_tmpfs() {
    mkdir -p "$TMPFS"
    if mountpoint -q "$TMPFS"; then umount "$TMPFS"; fi
    mount -t tmpfs -o "size=$1,mode=0700" modelcrypt-bench "$TMPFS"
}

clear_tmpfs() { find "$TMPFS" -mindepth 1 -delete; }

umount_tmpfs() {
    if mountpoint -q "$TMPFS" 2>/dev/null; then
        umount "$TMPFS" 2>/dev/null || umount -l "$TMPFS" || log "warning: could not unmount $TMPFS"
    fi
}

# ------------------------------------------------------------------- statistics

# openssl_rate ALG: one core's rate for ALG (sha256, aes-256-ctr) in MB/s (10^6 B/s), from
# `openssl speed -evp ALG -bytes 1048576 -seconds 3` (which prints 1000s of bytes per second of
# CPU time with a 'k' suffix).
openssl_rate() {
    openssl speed -evp "$1" -bytes 1048576 -seconds 3 2>/dev/null |
        awk -v alg="$1" 'tolower($1) == alg && $NF ~ /k$/ {sub(/k$/, "", $NF); r = $NF / 1000}
             END {if (r == "") exit 1; printf "%.1f\n", r}'
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1}
    END {if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
mbps() { awk -v b="$1" -v s="$2" 'BEGIN {printf "%.1f", b / s / 1e6}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
kib_to_mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
gb() { awk -v b="$1" 'BEGIN {printf "%.2f", b / 1e9}'; }
