//! modelcrypt: pack a model directory as a CNCF ModelPack OCI artifact, move it between
//! registries and layouts, and pull it into a pod: streamed, verified, safely extracted and
//! committed atomically.
//!
//! The pull pipeline, top to bottom:
//! `reference` names an artifact, `store` (over `registry` and `layout`) fetches manifest and
//! blobs, `pull` plans each layer and runs `digest` verification, decompression and `extract`
//! on a blocking thread per layer, and `extract::staging` commits the result.
//!
//! The library never touches the terminal; `cli` is the only module that prints.

#![forbid(unsafe_code)]
// Errors carry typed context (paths, digests, expected and actual values) and are the cold
// path; boxing them all would only make matching on them clumsier.
#![allow(clippy::result_large_err)]

pub mod cli;
pub mod copy;
pub mod crypt;
pub mod digest;
pub mod env;
pub mod error;
pub mod extract;
pub mod inspect;
pub mod kbs;
pub mod keys;
pub mod layout;
pub mod manifest;
pub mod modelpack;
pub mod ocicrypt;
pub mod pack;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod store;

/// The current time as RFC 3339 (UTC), for markers and configs.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
