//! The key broker reply parsers of `modelcrypt::kbs` on arbitrary bytes: the challenge (and the
//! hash it selects, and the runtime data bound to it), the attestation reply, an error reply
//! and a `Set-Cookie` value. Never panics. A session id accepted is 1 to 128 letters, digits or
//! `-`, and an error built from a reply renders without control characters (it goes to the
//! terminal and to logs; a hostile broker must not be able to write escape sequences there).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use modelcrypt::kbs::{
    parse_attest_reply, parse_challenge, parse_error_reply, parse_session_cookie,
    runtime_data_digest, HashAlgorithm, KbsError, TeeKey,
};

static TEE_KEY: LazyLock<TeeKey> = LazyLock::new(|| TeeKey::generate().expect("P-256 key"));

fn check_rendered(e: &KbsError) {
    let text = e.to_string();
    assert!(
        !text.chars().any(char::is_control),
        "an error built from a broker reply renders control characters: {text:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    match parse_challenge(data) {
        Ok(challenge) => match HashAlgorithm::from_challenge(&challenge.extra_params) {
            Ok(hash) => {
                let d = runtime_data_digest(&challenge.nonce, TEE_KEY.jwk(), "", hash);
                let expected = match hash {
                    HashAlgorithm::Sha256 => 32,
                    HashAlgorithm::Sha384 => 48,
                    HashAlgorithm::Sha512 => 64,
                };
                assert_eq!(d.len(), expected);
            }
            Err(e) => check_rendered(&e),
        },
        Err(e) => check_rendered(&e),
    }
    match parse_attest_reply(data) {
        Ok(token) => {
            let _ = token.len();
        }
        Err(e) => check_rendered(&e),
    }
    let status = match data {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 401,
    };
    let e = parse_error_reply("/kbs/v0/resource/default/key/k", status, data);
    check_rendered(&e);
    assert!(matches!(e, KbsError::Refused { status: s, .. } if s == status));
    if let Some(id) = parse_session_cookie(data) {
        assert!(
            !id.is_empty() && id.len() <= 128,
            "session id length {}",
            id.len()
        );
        assert!(
            id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "session id {id:?}"
        );
    }
});
