//! `Manifest::parse` on arbitrary bytes: never panics, and whatever it accepts serializes to
//! bytes that parse back to the same manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelcrypt::manifest::{Manifest, MAX_LAYERS};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::parse(data) else {
        return;
    };
    assert_eq!(m.schema_version, 2);
    assert!(!m.layers.is_empty() && m.layers.len() <= MAX_LAYERS);
    let _ = m.content_type();
    let bytes = m.to_bytes();
    let again = Manifest::parse(&bytes).expect("a serialized manifest parses again");
    assert_eq!(again, m, "parse -> serialize -> parse changed the manifest");
    assert_eq!(again.to_bytes(), bytes, "serialization is not stable");
});
