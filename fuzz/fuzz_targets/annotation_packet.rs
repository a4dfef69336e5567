//! `AnnotationPacket::parse` then `unwrap` with a fixed KEK (the demo's): never panics. An
//! accepted packet has a valid key broker URI, survives `to_json` -> `parse` unchanged, and
//! what it unwraps to, wrapped again for the same kid, unwraps to the same bytes.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use modelcrypt::ocicrypt::provider::{AnnotationPacket, Kek, ResourceUri};

static KEK: LazyLock<Kek> = LazyLock::new(|| {
    Kek::from_bytes(include_bytes!("../../demo/keys/demo.kek")).expect("the demo KEK is 32 bytes")
});

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = AnnotationPacket::parse(data) else {
        return;
    };
    let kid = packet.resource().expect("a parsed packet has a valid kid");
    assert_eq!(
        ResourceUri::parse(&kid.to_string()).expect("a kid's display form parses"),
        kid
    );
    let json = packet.to_json();
    let again = AnnotationPacket::parse(&json).expect("to_json output parses");
    assert_eq!(
        again.to_json(),
        json,
        "to_json -> parse -> to_json is not stable"
    );
    assert_eq!(
        (&again.version, &again.kid, &again.wrapped_data),
        (&packet.version, &packet.kid, &packet.wrapped_data)
    );
    assert_eq!(
        (&again.provider, &again.iv, &again.wrap_type),
        (&packet.provider, &packet.iv, &packet.wrap_type)
    );
    match packet.unwrap(&KEK) {
        Ok(plain) => {
            let rewrapped = AnnotationPacket::wrap(&kid, &KEK, &plain).expect("wrap");
            let back = rewrapped.unwrap(&KEK).expect("a fresh packet unwraps");
            assert_eq!(back.as_slice(), plain.as_slice());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
