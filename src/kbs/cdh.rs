//! The Confidential Data Hub route inside a Confidential Containers pod (kbs.md §5):
//! `GET http://127.0.0.1:8006/cdh/resource/R/T/G` on api-server-rest answers with the raw
//! resource; the guest's own agent did the attestation.

use zeroize::Zeroizing;

use super::KbsError;
use crate::ocicrypt::provider::ResourceUri;

pub const DEFAULT_URL: &str = "http://127.0.0.1:8006";
const MAX_RESOURCE: usize = 1 << 20;

pub struct Cdh {
    http: reqwest::Client,
    base: String,
}

impl Cdh {
    pub fn new(url: &str) -> Result<Cdh, KbsError> {
        // The CDH is on this machine; a proxy from the environment must never see the keys.
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|source| KbsError::Unreachable {
                url: url.into(),
                source,
            })?;
        Ok(Cdh {
            http,
            base: url.trim_end_matches('/').to_string(),
        })
    }

    pub async fn resource(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, KbsError> {
        let path = format!("/cdh/resource/{}", uri.path());
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|source| KbsError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        let status = resp.status();
        // Read through a bound, straight into a buffer that is wiped.
        let mut body = Zeroizing::new(Vec::new());
        let mut stream = resp.bytes_stream();
        use futures_util::StreamExt;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| KbsError::Malformed {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            if body.len() + chunk.len() > MAX_RESOURCE {
                return Err(KbsError::Malformed {
                    path,
                    reason: format!("resource over {MAX_RESOURCE} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(KbsError::Refused {
                path,
                status: status.as_u16(),
                kind: "CdhError".into(),
                detail: crate::extract::shown(&String::from_utf8_lossy(&body)),
            });
        }
        Ok(body)
    }
}
