//! The single integration-test binary (style.md, "What to imitate" 13): every integration test
//! is a module here so the crate and the harness are linked once. Shared helpers live in
//! tests/common/mod.rs.

#[path = "../common/mod.rs"]
mod common;

mod broker;
mod deploy;
mod encrypted;
mod faults;
mod harness;
mod hostile;
mod image;
mod resume;
mod roundtrip;
mod skopeo_crypt;
mod static_binary;
