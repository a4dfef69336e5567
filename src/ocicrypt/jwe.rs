//! STUB: replaced by the real JWE module.
use zeroize::Zeroizing;

use crate::keys::{PrivateKey, PublicKey};

#[derive(Debug, thiserror::Error)]
pub enum JweError {
    #[error("malformed JWE: {reason}")]
    Malformed { reason: String },
}

pub fn wrap(_payload: &[u8], _recipients: &[PublicKey]) -> Result<Vec<u8>, JweError> {
    Err(JweError::Malformed {
        reason: "stub".into(),
    })
}
pub fn unwrap(_jwe: &[u8], _keys: &[PrivateKey]) -> Result<Zeroizing<Vec<u8>>, JweError> {
    Err(JweError::Malformed {
        reason: "stub".into(),
    })
}
