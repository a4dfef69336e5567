//! Every environment variable modelcrypt reads. Each flag has one, so a pod spec can configure
//! the init container without a command line.

pub const MODELCRYPT_PLAIN_HTTP: &str = "MODELCRYPT_PLAIN_HTTP";
pub const MODELCRYPT_AUTHFILE: &str = "MODELCRYPT_AUTHFILE";
pub const MODELCRYPT_JSON_LOGS: &str = "MODELCRYPT_JSON_LOGS";
pub const MODELCRYPT_LOG: &str = "MODELCRYPT_LOG";
pub const MODELCRYPT_NO_PROGRESS: &str = "MODELCRYPT_NO_PROGRESS";
pub const MODELCRYPT_TO: &str = "MODELCRYPT_TO";
pub const MODELCRYPT_SOURCE: &str = "MODELCRYPT_SOURCE";
pub const MODELCRYPT_CONCURRENCY: &str = "MODELCRYPT_CONCURRENCY";
pub const MODELCRYPT_TAR: &str = "MODELCRYPT_TAR";
pub const MODELCRYPT_REPRODUCIBLE: &str = "MODELCRYPT_REPRODUCIBLE";
pub const MODELCRYPT_NAME: &str = "MODELCRYPT_NAME";
pub const MODELCRYPT_DECRYPTION_KEY: &str = "MODELCRYPT_DECRYPTION_KEY";
pub const MODELCRYPT_KEK: &str = "MODELCRYPT_KEK";
pub const MODELCRYPT_OCI_MEDIA_TYPES: &str = "MODELCRYPT_OCI_MEDIA_TYPES";
