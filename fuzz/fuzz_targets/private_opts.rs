//! `parse_private_opts` on arbitrary bytes: never panics, and an accepted key written back with
//! `private_opts_json` parses to the same key and nonce.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelcrypt::digest::Digest;
use modelcrypt::ocicrypt::{parse_private_opts, private_opts_json};

fuzz_target!(|data: &[u8]| {
    let Ok(key) = parse_private_opts(data) else {
        return;
    };
    let json = private_opts_json(&key, &Digest::sha256(data));
    let again = parse_private_opts(&json).expect("private_opts_json output parses");
    assert_eq!(again.key_bytes(), key.key_bytes());
    assert_eq!(again.nonce(), key.nonce());
});
