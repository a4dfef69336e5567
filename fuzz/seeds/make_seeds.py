#!/usr/bin/env python3
"""Writes the committed seed corpus, one directory per fuzz target, from the repository's demo
artifacts and test fixtures plus a few hand-made inputs. Deterministic: a re-run writes the
same files. Run from anywhere: python3 fuzz/seeds/make_seeds.py"""

import base64
import glob
import hashlib
import io
import json
import os
import shutil
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "keys")
ENC_LAYOUT = os.path.join(REPO, "demo", "tiny-model-encrypted.oci")
PLAIN_LAYOUT = os.path.join(REPO, "demo", "tiny-model.oci")


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def manifests(layout):
    index = json.load(open(os.path.join(layout, "index.json")))
    for m in index["manifests"]:
        algo, hexd = m["digest"].split(":")
        yield open(os.path.join(layout, "blobs", algo, hexd), "rb").read()


def manifest_seeds():
    for layout in (ENC_LAYOUT, PLAIN_LAYOUT):
        for raw in manifests(layout):
            write("manifest", raw)
    write("manifest", '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}')
    write("manifest", '{"schemaVersion":2,"config":{"mediaType":"a","digest":"sha256:' + "0" * 64
          + '","size":1},"layers":[{"mediaType":"b","digest":"sha512:' + "ab" * 64
          + '","size":18446744073709551615,"urls":["x"],"x":1.5e300}],"subject":null}')


ENC_NAMES = {
    "org.opencontainers.image.enc.pubopts": 0,
    "org.opencontainers.image.enc.keys.jwe": 1,
    "org.opencontainers.image.enc.keys.provider.attestation-agent": 2,
    "org.cncf.model.filepath": 6,
}


def annotation_seeds():
    """See fuzz_targets/annotations.rs for the input format."""
    raw = next(manifests(ENC_LAYOUT))
    layer = json.loads(raw)["layers"][0]
    ann = layer["annotations"]
    raw_form, decoded_form = [], []
    for name, value in ann.items():
        sel = ENC_NAMES.get(name)
        if sel is None:
            chunk = bytes([7]) + name.encode() + b"=" + value.encode()
            raw_form.append(chunk)
            decoded_form.append(chunk)
            continue
        raw_form.append(bytes([sel]) + value.encode())
        if name.startswith("org.opencontainers.image.enc."):
            items = [base64.b64decode(i) for i in value.split(",")]
            decoded_form.append(bytes([sel | 8]) + b"\xfe".join(items))
        else:
            decoded_form.append(bytes([sel]) + value.encode())
    write("annotations", b"\xff".join(raw_form))
    write("annotations", b"\xff".join(decoded_form))
    # Each recipient alone, with the pubopts.
    pub = [c for c in decoded_form if c[0] & 7 == 0]
    for c in decoded_form:
        if c[0] & 7 in (1, 2):
            write("annotations", b"\xff".join(pub + [c]))
            # The packets and JWEs themselves seed the other targets.
            for item in c[1:].split(b"\xfe"):
                write("annotation_packet" if c[0] & 7 == 2 else "jwe", item)
        if c[0] & 7 == 0:
            write("private_opts", b'{"symkey":"' + base64.b64encode(bytes(range(32)))
                  + b'","digest":"sha256:' + b"0" * 64 + b'","cipheroptions":{"nonce":"'
                  + base64.b64encode(bytes(16)) + b'"}}')
    write("private_opts", b'{"symkey":"AAAA","cipheroptions":{}}')


def jwe_seeds():
    for f in sorted(glob.glob(os.path.join(FIXTURES, "jwe-*")) + glob.glob(os.path.join(FIXTURES, "gojose-*.json"))):
        write("jwe", open(f, "rb").read())


def annotation_packet_seeds():
    write("annotation_packet", '{"version":"0.1.0","kid":"kbs://host:8080/repo/key/tag?x=1","wrapped_data":"","provider":"kbs","iv":"AAAAAAAAAAAAAAAA","wrap_type":"A256GCM"}')


def broker_reply_seeds():
    write("broker_reply", '{"nonce":"bm9uY2U=","extra-params":""}')
    write("broker_reply", '{"nonce":"bm9uY2U=","extra-params":{"selected-hash-algorithm":"SHA512"}}')
    write("broker_reply", '{"token":"eyJhbGciOiJFUzI1NiJ9.e30.c2ln"}')
    write("broker_reply", '{"type":"https://github.com/confidential-containers/kbs/errors/PolicyDeny","detail":"Access denied by policy"}')
    write("broker_reply", "kbs-session-id=0123456789abcdef0123456789abcdef; Expires=Sat, 28 Nov 2026 00:05:00 GMT")


def entry_path_seeds():
    for p in ["config.json", "./a/b/../c", "a//b/./c", "/etc/passwd", "../x", ".modelcrypt-complete",
              "sub/.modelcrypt-staging-owner", "a\x00b", "\u00e9t\u00e9/\u2603", "a/\x1b[31m", "."]:
        write("entry_path", p)


def tar_bytes(build, fmt=tarfile.GNU_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        build(t)
    # Cut the 10 KiB record padding down to the end-of-archive blocks: shorter seeds.
    data = buf.getvalue()
    return data.rstrip(b"\0") + b"\0" * (1024 + (-len(data.rstrip(b"\0")) % 512))


def add(t, name, kind=tarfile.REGTYPE, data=b"", link="", mode=0o644):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 1700000000
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    t.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def tar_seeds():
    write("tar_extract", tar_bytes(lambda t: add(t, "config.json", data=b'{"model_type":"qwen3"}')))
    write("tar_extract", tar_bytes(lambda t: (
        add(t, "./", tarfile.DIRTYPE, mode=0o755),
        add(t, "d", tarfile.DIRTYPE, mode=0o500),
        add(t, "d/f", data=b"x" * 600),
        add(t, "d/hard", tarfile.LNKTYPE, link="d/f"),
        add(t, "d/sym", tarfile.SYMTYPE, link="f"),
        add(t, "up", tarfile.SYMTYPE, link="d/../d"),
    )))
    write("tar_extract", tar_bytes(lambda t: (
        add(t, "esc", tarfile.SYMTYPE, link=".."),
        add(t, "esc/owned", data=b"pwn"),
    )))
    write("tar_extract", tar_bytes(lambda t: (
        add(t, "a/" * 60 + "long-gnu-name", data=b"1"),
        add(t, "../outside", data=b"2"),
    )))
    write("tar_extract", tar_bytes(lambda t: (
        add(t, "p/" * 60 + "long-pax-name", data=b"1"),
        add(t, "abs", tarfile.SYMTYPE, link="/etc"),
        add(t, "fifo", tarfile.FIFOTYPE),
    ), fmt=tarfile.PAX_FORMAT))
    write("tar_extract", tar_bytes(lambda t: (
        add(t, "x", data=b"1", mode=0o4755),
        add(t, ".wh.x", data=b""),
    ), fmt=tarfile.USTAR_FORMAT))


def main():
    for d in glob.glob(os.path.join(HERE, "*", "")):
        shutil.rmtree(d)
    manifest_seeds()
    annotation_seeds()
    jwe_seeds()
    annotation_packet_seeds()
    broker_reply_seeds()
    entry_path_seeds()
    tar_seeds()


if __name__ == "__main__":
    main()
