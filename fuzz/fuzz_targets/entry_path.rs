//! `SafeRelPath::from_bytes` / `new` on arbitrary bytes. Whatever is accepted is relative, has
//! no `..`, no root, no NUL, at least one component, is not a modelcrypt marker, and reads the
//! same when parsed again from its display form.
#![no_main]

use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use modelcrypt::extract::{SafeRelPath, MARKER, OWNER_MARKER};

fuzz_target!(|data: &[u8]| {
    let from_bytes = SafeRelPath::from_bytes(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let from_str = SafeRelPath::new(s);
        assert_eq!(
            from_bytes.as_ref().ok(),
            from_str.as_ref().ok(),
            "from_bytes and new disagree"
        );
    } else {
        assert!(from_bytes.is_err(), "non-UTF-8 path accepted");
    }
    let Ok(p) = from_bytes else {
        return;
    };
    let path = p.as_path();
    let bytes = path.as_os_str().as_bytes();
    assert!(path.is_relative(), "{p:?} is not relative");
    assert!(!path.has_root(), "{p:?} has a root");
    assert!(!bytes.contains(&0), "{p:?} contains NUL");
    assert!(!bytes.is_empty(), "empty path accepted");
    assert!(bytes.len() <= 4096, "{p:?} is longer than PATH_MAX");
    assert!(
        path.components().all(|c| matches!(c, Component::Normal(_))),
        "{p:?} has a component other than a normal name"
    );
    assert!(
        !path.components().any(|c| c == Component::ParentDir),
        "{p:?} contains `..`"
    );
    assert!(path != Path::new(MARKER) && path != Path::new(OWNER_MARKER));
    assert!(
        !std::str::from_utf8(bytes)
            .unwrap()
            .chars()
            .any(char::is_control),
        "{p:?} contains control characters"
    );
    let again = SafeRelPath::new(&p.to_string()).expect("an accepted path's display form parses");
    assert_eq!(again, p, "display form parses to another path");
});
