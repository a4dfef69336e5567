//! STUB: replaced by the real key parsing module.
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a key: {what}")]
    NotAKey { what: String },
}

pub enum PrivateKey {
    Rsa(()),
}
pub enum PublicKey {
    Rsa(()),
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}
impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PublicKey")
    }
}

impl PrivateKey {
    pub fn from_bytes(_bytes: &[u8], _password: Option<&[u8]>) -> Result<PrivateKey, KeyError> {
        Err(KeyError::NotAKey {
            what: "stub".into(),
        })
    }
    pub fn kind(&self) -> &'static str {
        "stub"
    }
}
impl PublicKey {
    pub fn from_bytes(_bytes: &[u8]) -> Result<PublicKey, KeyError> {
        Err(KeyError::NotAKey {
            what: "stub".into(),
        })
    }
    pub fn kind(&self) -> &'static str {
        "stub"
    }
}
pub fn generate_rsa4096() -> Result<(Zeroizing<String>, String), KeyError> {
    Err(KeyError::NotAKey {
        what: "stub".into(),
    })
}
pub fn generate_ec_p256() -> Result<(Zeroizing<String>, String), KeyError> {
    Err(KeyError::NotAKey {
        what: "stub".into(),
    })
}
