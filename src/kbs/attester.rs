//! TEE evidence for the key broker. `sample` proves nothing and exists for tests and demos;
//! the hardware attesters (TDX, SNP through configfs-tsm) are the next step.

use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum AttesterError {
    #[error("no TEE found ({0}); use `--tee sample` only for tests, it proves nothing")]
    NoTee(String),
}

/// Produces `primary_evidence` for given report data (kbs.md §4).
pub trait Attester: Send + Sync {
    fn tee(&self) -> kbs_types::Tee;
    fn evidence(&self, report_data: &[u8]) -> Result<Value, AttesterError>;
}

/// The `sample` TEE (kbs.md §3): `{"svn":"1","report_data":"<std base64>"}`.
pub struct Sample;

impl Attester for Sample {
    fn tee(&self) -> kbs_types::Tee {
        kbs_types::Tee::Sample
    }

    fn evidence(&self, report_data: &[u8]) -> Result<Value, AttesterError> {
        Ok(json!({"svn": "1", "report_data": super::sample_report_data(report_data)}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_evidence_has_the_shape_the_sample_verifier_reads() {
        let e = Sample.evidence(&[0xab; 48]).unwrap();
        assert_eq!(e["svn"], "1");
        assert_eq!(e["report_data"].as_str().unwrap().len(), 64);
        assert_eq!(serde_json::to_string(&Sample.tee()).unwrap(), "\"sample\"");
    }
}
