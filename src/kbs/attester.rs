//! TEE evidence for the key broker (kbs.md §3-§4). `tdx` and `snp` get a quote or an
//! attestation report through configfs-tsm (`/sys/kernel/config/tsm/report`, Linux 6.7+);
//! `sample` proves nothing and exists for tests and demos.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

pub const TSM_ROOT: &str = "/sys/kernel/config/tsm/report";
/// configfs-tsm takes exactly this much report data (TSM_INBLOB_MAX, kbs.md §4.1).
const INBLOB_LEN: usize = 64;
/// A TDX quote is at most 32 KiB, an SNP report 1184 bytes, its certificates a few KiB.
const MAX_BLOB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AttesterError {
    #[error("no TEE found ({0}); use `--tee sample` only for tests, it proves nothing")]
    NoTee(String),
    #[error("configfs-tsm at `{path}`")]
    Tsm {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configfs-tsm entry `{path}` belongs to provider `{actual}`, not `{expected}`")]
    Provider {
        path: PathBuf,
        expected: &'static str,
        actual: String,
    },
    #[error("configfs-tsm entry `{path}` was written by someone else at the same time (generation `{generation}`)")]
    Race { path: PathBuf, generation: String },
    #[error("report data is {0} bytes; at most 64 fit")]
    ReportData(usize),
    #[error("the SNP attestation report is malformed")]
    SnpReport(#[source] std::io::Error),
}

/// Produces `primary_evidence` for given report data (kbs.md §4).
pub trait Attester: Send + Sync {
    fn tee(&self) -> kbs_types::Tee;
    fn evidence(&self, report_data: &[u8]) -> Result<Value, AttesterError>;
}

/// The `sample` TEE (kbs.md §3): `{"svn":"1","report_data":"<std base64>"}`, unpadded.
pub struct Sample;

impl Attester for Sample {
    fn tee(&self) -> kbs_types::Tee {
        kbs_types::Tee::Sample
    }

    fn evidence(&self, report_data: &[u8]) -> Result<Value, AttesterError> {
        Ok(json!({"svn": "1", "report_data": B64.encode(report_data)}))
    }
}

/// What one configfs-tsm report produced.
#[derive(Debug)]
pub struct TsmOutput {
    pub outblob: Vec<u8>,
    pub auxblob: Vec<u8>,
}

/// configfs-tsm: create an entry, write the report data, read the report, remove the entry.
pub struct Tsm {
    root: PathBuf,
}

impl Tsm {
    pub fn new(root: impl Into<PathBuf>) -> Tsm {
        Tsm { root: root.into() }
    }

    /// The provider behind this configfs-tsm (`tdx_guest`, `sev_guest`); `Ok(None)` when
    /// there is no configfs-tsm here at all.
    pub fn provider(&self) -> Result<Option<String>, AttesterError> {
        if !self.root.is_dir() {
            return Ok(None);
        }
        let entry = Entry::create(&self.root)?;
        let provider = entry.0.join("provider");
        read_text(&provider).map(Some).map_err(tsm(&provider))
    }

    /// A report for `report_data` (zero-padded to 64 bytes) from `provider`.
    pub fn report(
        &self,
        provider: &'static str,
        report_data: &[u8],
    ) -> Result<TsmOutput, AttesterError> {
        let entry = Entry::create(&self.root)?;
        collect(&entry.0, provider, report_data)
    }
}

/// One report entry, removed (rmdir, as configfs wants) when dropped.
struct Entry(PathBuf);

impl Entry {
    /// A random name: configfs-tsm is shared by the whole guest, and in a container our pid
    /// is usually 1, so a pid-based name would collide with another init container's entry
    /// or with one a killed run left behind.
    fn create(root: &Path) -> Result<Entry, AttesterError> {
        let mut last = None;
        for _ in 0..4 {
            let mut r = [0u8; 8];
            aws_lc_rs::rand::fill(&mut r).map_err(|_| AttesterError::Tsm {
                path: root.into(),
                source: std::io::Error::other("no randomness"),
            })?;
            let path = root.join(format!("modelcrypt-{}", crate::digest::hex(&r)));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(Entry(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(source) => return Err(AttesterError::Tsm { path, source }),
            }
        }
        let source = last.unwrap_or_else(|| std::io::Error::other("name collision"));
        Err(AttesterError::Tsm {
            path: root.into(),
            source,
        })
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

fn tsm(path: &Path) -> impl FnOnce(std::io::Error) -> AttesterError + '_ {
    move |source| AttesterError::Tsm {
        path: path.to_path_buf(),
        source,
    }
}

/// The steps after `mkdir` (kbs.md §4.1): check the provider, write the inblob in one write,
/// read the outblob (and auxblob), and check that nobody else wrote in between.
pub fn collect(
    entry: &Path,
    provider: &'static str,
    report_data: &[u8],
) -> Result<TsmOutput, AttesterError> {
    if report_data.len() > INBLOB_LEN {
        return Err(AttesterError::ReportData(report_data.len()));
    }
    let actual = read_text(&entry.join("provider")).map_err(tsm(entry))?;
    if actual != provider {
        return Err(AttesterError::Provider {
            path: entry.into(),
            expected: provider,
            actual,
        });
    }
    let mut inblob = [0u8; INBLOB_LEN];
    inblob[..report_data.len()].copy_from_slice(report_data);
    let inblob_path = entry.join("inblob");
    // One write of all 64 bytes: the TDX provider refuses any other length.
    fs::OpenOptions::new()
        .write(true)
        .open(&inblob_path)
        .and_then(|mut f| f.write_all(&inblob))
        .map_err(tsm(&inblob_path))?;
    let outblob_path = entry.join("outblob");
    let outblob = read_bounded(&outblob_path).map_err(tsm(&outblob_path))?;
    let aux_path = entry.join("auxblob");
    let auxblob = match read_bounded(&aux_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(tsm(&aux_path)(e)),
    };
    let generation = read_text(&entry.join("generation")).map_err(tsm(entry))?;
    if generation != "1" {
        return Err(AttesterError::Race {
            path: entry.into(),
            generation,
        });
    }
    Ok(TsmOutput { outblob, auxblob })
}

fn read_text(path: &Path) -> std::io::Result<String> {
    Ok(String::from_utf8_lossy(&read_bounded(path)?)
        .trim()
        .to_string())
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    fs::File::open(path)?.take(MAX_BLOB).read_to_end(&mut out)?;
    Ok(out)
}

/// Intel TDX: `{"cc_eventlog": null, "quote": "<std base64>"}` (kbs.md §4.1). The event log is
/// left out (`null`): the verifier then skips the RTMR replay, with a warning.
pub struct Tdx {
    tsm: Tsm,
}

impl Tdx {
    pub fn new(tsm: Tsm) -> Tdx {
        Tdx { tsm }
    }

    pub fn evidence_from(out: &TsmOutput) -> Value {
        json!({"cc_eventlog": null, "quote": B64.encode(&out.outblob)})
    }
}

impl Attester for Tdx {
    fn tee(&self) -> kbs_types::Tee {
        kbs_types::Tee::Tdx
    }

    fn evidence(&self, report_data: &[u8]) -> Result<Value, AttesterError> {
        Ok(Tdx::evidence_from(
            &self.tsm.report("tdx_guest", report_data)?,
        ))
    }
}

/// AMD SEV-SNP: `{"attestation_report": {…}, "cert_chain": null}`, the report as the `sev`
/// crate serializes it, which is the layout Trustee's verifier reads (kbs.md §4.2).
pub struct Snp {
    tsm: Tsm,
}

impl Snp {
    pub fn new(tsm: Tsm) -> Snp {
        Snp { tsm }
    }

    pub fn evidence_from(out: &TsmOutput) -> Result<Value, AttesterError> {
        let report = sev::firmware::guest::AttestationReport::from_bytes(&out.outblob)
            .map_err(AttesterError::SnpReport)?;
        let report = serde_json::to_value(report)
            .map_err(|e| AttesterError::SnpReport(std::io::Error::other(e)))?;
        // Certificates are left to the broker, which fetches the VCEK from AMD's KDS.
        Ok(json!({"attestation_report": report, "cert_chain": null}))
    }
}

impl Attester for Snp {
    fn tee(&self) -> kbs_types::Tee {
        kbs_types::Tee::Snp
    }

    fn evidence(&self, report_data: &[u8]) -> Result<Value, AttesterError> {
        Snp::evidence_from(&self.tsm.report("sev_guest", report_data)?)
    }
}

/// `--tee auto`: the hardware configfs-tsm reports. Never falls back to `sample`.
pub fn detect(root: &Path) -> Result<Box<dyn Attester>, AttesterError> {
    let tsm = Tsm::new(root);
    match tsm.provider()?.as_deref() {
        Some("tdx_guest") => Ok(Box::new(Tdx::new(tsm))),
        Some("sev_guest") => Ok(Box::new(Snp::new(tsm))),
        Some(other) => Err(AttesterError::NoTee(format!(
            "configfs-tsm provider `{other}` is not supported"
        ))),
        None => Err(AttesterError::NoTee(format!(
            "`{}` is not available",
            root.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_evidence_has_the_shape_the_sample_verifier_reads() {
        let e = Sample.evidence(&[0xab; 48]).unwrap();
        assert_eq!(e["svn"], "1");
        assert_eq!(
            B64.decode(e["report_data"].as_str().unwrap()).unwrap(),
            vec![0xab; 48]
        );
        assert_eq!(serde_json::to_string(&Sample.tee()).unwrap(), "\"sample\"");
    }

    /// A configfs-tsm entry as the kernel presents it after `mkdir`.
    fn fake_entry(provider: &str, outblob: &[u8], generation: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("provider"), format!("{provider}\n")).unwrap();
        fs::write(dir.path().join("inblob"), b"").unwrap();
        fs::write(dir.path().join("outblob"), outblob).unwrap();
        fs::write(dir.path().join("generation"), format!("{generation}\n")).unwrap();
        dir
    }

    #[test]
    fn tdx_writes_the_padded_64_byte_inblob_and_wraps_the_quote() {
        let entry = fake_entry("tdx_guest", b"QUOTE-BYTES", "1");
        let digest = [7u8; 48];
        let out = collect(entry.path(), "tdx_guest", &digest).unwrap();
        let inblob = fs::read(entry.path().join("inblob")).unwrap();
        assert_eq!(inblob.len(), 64);
        assert_eq!(&inblob[..48], &digest);
        assert_eq!(&inblob[48..], &[0u8; 16]);
        let e = Tdx::evidence_from(&out);
        assert_eq!(
            e,
            json!({"cc_eventlog": null, "quote": B64.encode(b"QUOTE-BYTES")})
        );
    }

    #[test]
    fn a_wrong_provider_or_a_concurrent_writer_is_refused() {
        let entry = fake_entry("sev_guest", b"x", "1");
        assert!(matches!(
            collect(entry.path(), "tdx_guest", &[0; 48]),
            Err(AttesterError::Provider { .. })
        ));
        let entry = fake_entry("tdx_guest", b"x", "2");
        assert!(matches!(
            collect(entry.path(), "tdx_guest", &[0; 48]),
            Err(AttesterError::Race { .. })
        ));
        assert!(matches!(
            collect(entry.path(), "tdx_guest", &[0; 65]),
            Err(AttesterError::ReportData(65))
        ));
    }

    #[test]
    fn snp_serializes_the_report_with_its_report_data_as_a_number_array() {
        // A version-3 report of 1184 bytes from a Genoa (family 0x19, model 0x11) with
        // report_data at offset 0x50 (AMD SEV-SNP ABI, Table 22).
        let mut raw = vec![0u8; 1184];
        raw[0] = 3;
        raw[0x188] = 0x19;
        raw[0x189] = 0x11;
        raw[0x50..0x50 + 48].copy_from_slice(&[9u8; 48]);
        let entry = fake_entry("sev_guest", &raw, "1");
        let out = collect(entry.path(), "sev_guest", &[9u8; 48]).unwrap();
        let e = Snp::evidence_from(&out).unwrap();
        assert_eq!(e["cert_chain"], Value::Null);
        let rd: Vec<u64> = e["attestation_report"]["report_data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(rd.len(), 64);
        assert_eq!(&rd[..48], &[9u64; 48][..]);
        assert_eq!(e["attestation_report"]["version"], 3);
    }

    #[test]
    fn auto_detection_never_falls_back_to_sample() {
        let missing = tempfile::tempdir().unwrap().path().join("no-tsm");
        assert!(matches!(detect(&missing), Err(AttesterError::NoTee(_))));
    }
}
