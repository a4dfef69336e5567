//! `ocicrypt::jwe::unwrap` on arbitrary bytes with fixed RSA-2048 and EC (P-256, P-384, P-521)
//! private keys: never panics. The seed corpus holds JWEs that these keys open, so the fuzzer
//! starts from fully decrypting inputs.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use modelcrypt::keys::PrivateKey;
use modelcrypt::ocicrypt::jwe::{self, MAX_JWE_LEN};

static KEYS: LazyLock<Vec<PrivateKey>> = LazyLock::new(|| {
    [
        &include_bytes!("../../tests/fixtures/keys/rsa2048.pkcs8.pem")[..],
        &include_bytes!("../../tests/fixtures/keys/ec-p256.pkcs8.pem")[..],
        &include_bytes!("../../tests/fixtures/keys/ec-p384.pkcs8.pem")[..],
        &include_bytes!("../../tests/fixtures/keys/ec-p521.pkcs8.pem")[..],
    ]
    .iter()
    .map(|pem| PrivateKey::from_bytes(pem, None).expect("fixture key loads"))
    .collect()
});

fuzz_target!(|data: &[u8]| {
    let result = jwe::unwrap(data, &KEYS);
    if data.len() > MAX_JWE_LEN {
        assert!(result.is_err(), "a JWE over MAX_JWE_LEN was accepted");
    }
    if let Err(e) = result {
        // Error messages are rendered to the user: they must render.
        let _ = e.to_string();
    }
});
