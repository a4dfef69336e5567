//! The ocicrypt annotation readers (`pubopts_hmac`, `layer_decryption`, `provider_kids`,
//! `decrypted_descriptor`) on a descriptor whose annotations come from the fuzz input, with a
//! fixed keyring (an RSA and an EC private key, and the demo KEK). Never panics; a layer key
//! found implies a valid pubopts HMAC, and every kid listed parses back from its display form.
//!
//! Input: annotations separated by 0xFF (never in UTF-8). The first byte of each picks the name
//! (low 3 bits, see `NAMES`; 7 = the text up to the first `=`) and whether the value is raw
//! text (bit 3 clear) or items separated by 0xFE that the harness base64-encodes and joins
//! with `,` as ocicrypt does (bit 3 set), so the fuzzer mutates the JSON inside directly.
#![no_main]

use std::sync::LazyLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use modelcrypt::digest::Digest;
use modelcrypt::keys::PrivateKey;
use modelcrypt::manifest::Descriptor;
use modelcrypt::ocicrypt::provider::{Kek, ResourceUri};
use modelcrypt::ocicrypt::{
    decrypted_descriptor, is_encrypted, layer_decryption, provider_kids, pubopts_hmac, Keyring,
    ANNOTATION_PREFIX,
};

const NAMES: [&str; 7] = [
    "org.opencontainers.image.enc.pubopts",
    "org.opencontainers.image.enc.keys.jwe",
    "org.opencontainers.image.enc.keys.provider.attestation-agent",
    "org.opencontainers.image.enc.keys.provider.other",
    "org.opencontainers.image.enc.keys.pgp",
    "org.opencontainers.image.enc.keys.",
    "org.cncf.model.filepath",
];

static KEYS: LazyLock<Keyring> = LazyLock::new(|| Keyring {
    private_keys: [
        &include_bytes!("../../demo/keys/demo.pem")[..],
        &include_bytes!("../../tests/fixtures/keys/rsa2048.pkcs8.pem")[..],
    ]
    .iter()
    .map(|pem| PrivateKey::from_bytes(pem, None).expect("fixture key loads"))
    .collect(),
    keks: vec![Kek::from_bytes(include_bytes!("../../demo/keys/demo.kek")).expect("32 bytes")],
});

fn descriptor(data: &[u8]) -> Descriptor {
    let mut d = Descriptor::new(
        "application/vnd.cncf.model.weight.v1.raw+encrypted",
        Digest::sha256(b""),
        0,
    );
    for chunk in data.split(|b| *b == 0xFF) {
        let Some((&sel, rest)) = chunk.split_first() else {
            continue;
        };
        let (name, rest) = match NAMES.get(usize::from(sel & 7)) {
            Some(n) => (n.to_string(), rest),
            None => {
                let at = rest.iter().position(|b| *b == b'=').unwrap_or(rest.len());
                let tail = rest.get(at + 1..).unwrap_or_default();
                (String::from_utf8_lossy(&rest[..at]).into_owned(), tail)
            }
        };
        let value = if sel & 8 != 0 {
            rest.split(|b| *b == 0xFE)
                .map(|item| B64.encode(item))
                .collect::<Vec<_>>()
                .join(",")
        } else {
            String::from_utf8_lossy(rest).into_owned()
        };
        d.annotations.insert(name, value);
    }
    d
}

fuzz_target!(|data: &[u8]| {
    let d = descriptor(data);
    assert!(is_encrypted(&d));
    let hmac = pubopts_hmac(&d);
    match layer_decryption(&d, &KEYS) {
        Ok(found) => {
            let hmac = hmac.expect("a layer key was found, so pubopts parsed");
            assert_eq!(found.hmac, hmac);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    for kid in provider_kids(&d) {
        assert_eq!(
            ResourceUri::parse(&kid.to_string()).expect("a kid's display form parses"),
            kid
        );
    }
    let plain = decrypted_descriptor(&d, Digest::sha256(data));
    assert!(!is_encrypted(&plain));
    assert!(plain
        .annotations
        .keys()
        .all(|k| !k.starts_with(ANNOTATION_PREFIX)));
});
