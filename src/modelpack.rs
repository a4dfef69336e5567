//! The CNCF ModelPack format (model-spec v1, modelpack.md §1): media types, annotations, the
//! config JSON, and how a layer's media type says what its bytes are.
//!
//! Both the current `vnd.cncf` names and the legacy `vnd.cnai` ones are read; only the
//! current ones are written.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::digest::Digest;
use crate::manifest::Descriptor;

pub const ARTIFACT_TYPE: &str = "application/vnd.cncf.model.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.cncf.model.config.v1+json";
pub const LEGACY_CONFIG_MEDIA_TYPE: &str = "application/vnd.cnai.model.config.v1+json";

pub const ANNOTATION_FILEPATH: &str = "org.cncf.model.filepath";
pub const ANNOTATION_METADATA: &str = "org.cncf.model.file.metadata+json";
pub const ANNOTATION_UNTESTED: &str = "org.cncf.model.file.mediatype.untested";
const LEGACY_FILEPATH: &str = "org.cnai.model.filepath";
const LEGACY_METADATA: &str = "org.cnai.model.file.metadata+json";

const MODEL_PREFIXES: [&str; 2] = ["application/vnd.cncf.model.", "application/vnd.cnai.model."];
const ENCRYPTED_SUFFIX: &str = "+encrypted";

/// What kind of file a layer carries (modctl's classification).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Config,
    Weight,
    Code,
    Doc,
}

impl Kind {
    fn media_part(self) -> &'static str {
        match self {
            Kind::Config => "weight.config",
            Kind::Weight => "weight",
            Kind::Code => "code",
            Kind::Doc => "doc",
        }
    }

    /// The ModelPack media type for this kind, raw or tar.
    pub fn media_type(self, tar: bool) -> String {
        let packing = if tar { "tar" } else { "raw" };
        format!(
            "application/vnd.cncf.model.{}.v1.{packing}",
            self.media_part()
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    /// The blob is the file's bytes; its path is in the filepath annotation.
    Raw,
    /// The blob is a tar archive, possibly compressed.
    Tar(Compression),
}

/// How to turn a layer's bytes into files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerFormat {
    pub packing: Packing,
    /// The media type ends in `+encrypted` (ocicrypt): decrypt before unpacking.
    pub encrypted: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsupported layer media type `{0}`")]
pub struct UnknownMediaType(pub String);

impl LayerFormat {
    /// Dispatches on prefix and suffix rather than an exact list: the spec's list is a SHOULD
    /// and tools in the wild add their own (`…weight.v1.gguf`).
    pub fn of(media_type: &str) -> Result<LayerFormat, UnknownMediaType> {
        let unknown = || UnknownMediaType(media_type.to_string());
        let (base, encrypted) = match media_type.strip_suffix(ENCRYPTED_SUFFIX) {
            Some(base) => (base, true),
            None => (media_type, false),
        };
        let tar = |suffix: &str| match suffix {
            "tar" => Some(Compression::None),
            "tar+gzip" | "tar.gzip" => Some(Compression::Gzip),
            "tar+zstd" | "tar.zstd" => Some(Compression::Zstd),
            _ => None,
        };
        if let Some(rest) = MODEL_PREFIXES.iter().find_map(|p| base.strip_prefix(p)) {
            let (_, packing) = rest.rsplit_once(".v1.").ok_or_else(unknown)?;
            let packing = match tar(packing) {
                Some(c) => Packing::Tar(c),
                None if packing.is_empty() || packing.contains('+') => return Err(unknown()),
                // `raw`, and single-file formats such as `gguf` or `safetensors`.
                None => Packing::Raw,
            };
            return Ok(LayerFormat { packing, encrypted });
        }
        let image_tar = [
            "application/vnd.oci.image.layer.v1.",
            "application/vnd.oci.image.layer.nondistributable.v1.",
            "application/vnd.docker.image.rootfs.diff.",
            "application/vnd.docker.image.rootfs.foreign.diff.",
        ];
        if let Some(suffix) = image_tar.iter().find_map(|p| base.strip_prefix(p)) {
            let c = tar(suffix).ok_or_else(unknown)?;
            return Ok(LayerFormat {
                packing: Packing::Tar(c),
                encrypted,
            });
        }
        Err(unknown())
    }
}

/// The file path a layer claims (`org.cncf.model.filepath`, or the legacy `cnai` key).
pub fn filepath(desc: &Descriptor) -> Option<&str> {
    desc.annotations
        .get(ANNOTATION_FILEPATH)
        .or_else(|| desc.annotations.get(LEGACY_FILEPATH))
        .map(String::as_str)
}

/// How messages name a layer: its file path and digest, or its index and digest.
pub fn layer_label(index: usize, desc: &Descriptor) -> String {
    match filepath(desc) {
        // The path is the artifact's word: escaped and bounded before it reaches a log line.
        Some(p) => format!("`{}` ({})", crate::extract::shown(p), desc.digest),
        None => format!("#{index} ({})", desc.digest),
    }
}

/// `org.cncf.model.file.metadata+json`, as modctl writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMetadata {
    pub name: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub mtime: OffsetDateTime,
    pub typeflag: u8,
}

#[derive(Debug, thiserror::Error)]
#[error("layer `{digest}` has an unreadable `{ANNOTATION_METADATA}` annotation")]
pub struct BadMetadata {
    pub digest: Digest,
    #[source]
    pub source: serde_json::Error,
}

/// The layer's file metadata, if annotated.
pub fn metadata(desc: &Descriptor) -> Result<Option<FileMetadata>, BadMetadata> {
    let Some(raw) = desc
        .annotations
        .get(ANNOTATION_METADATA)
        .or_else(|| desc.annotations.get(LEGACY_METADATA))
    else {
        return Ok(None);
    };
    serde_json::from_str(raw)
        .map(Some)
        .map_err(|source| BadMetadata {
            digest: desc.digest.clone(),
            source,
        })
}

/// The model config blob (`application/vnd.cncf.model.config.v1+json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub descriptor: ModelDescriptor,
    pub config: ModelProperties,
    pub modelfs: ModelFs,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelDescriptor {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub created_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(flatten)]
    pub extra: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param_size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    #[serde(flatten)]
    pub extra: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

impl Default for ModelFs {
    fn default() -> Self {
        ModelFs {
            kind: "layers".into(),
            diff_ids: Vec::new(),
        }
    }
}

/// modctl's file classification (modctl `pkg/modelfile/constants.go`), checked in the order
/// config, weights, code, docs. `None` means no list matched.
pub fn classify(file_name: &str) -> Option<Kind> {
    let lower = file_name.to_ascii_lowercase();
    let ext = lower.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    const CONFIG_NAMES: &[&str] = &[
        "tokenizer.model",
        "spiece.model",
        "sentencepiece.bpe.model",
        "merges.txt",
        "vocab.txt",
        "chat_template.jinja",
        "modelfile.yaml",
    ];
    const CONFIG_EXT: &[&str] = &[
        "json", "jsonl", "yaml", "yml", "toml", "ini", "cfg", "conf", "tiktoken", "jinja", "vocab",
    ];
    const WEIGHT_EXT: &[&str] = &[
        "safetensors",
        "bin",
        "pt",
        "pth",
        "ckpt",
        "gguf",
        "ggml",
        "ggmf",
        "ggjt",
        "onnx",
        "h5",
        "hdf5",
        "pb",
        "tflite",
        "msgpack",
        "npz",
        "npy",
        "pkl",
        "pickle",
        "mlmodel",
        "keras",
        "engine",
        "plan",
        "trt",
        "nemo",
        "joblib",
        "mar",
        "params",
        "model",
    ];
    const CODE_EXT: &[&str] = &[
        "py", "sh", "ipynb", "js", "ts", "go", "rs", "c", "cc", "cpp", "h", "hpp", "cu", "cuh",
        "java", "rb", "pl", "lua", "r", "bat", "ps1", "swift", "kt", "scala", "patch",
    ];
    const DOC_EXT: &[&str] = &[
        "md", "markdown", "txt", "rst", "pdf", "html", "htm", "png", "jpg", "jpeg", "gif", "svg",
        "webp", "cff", "bib", "tex", "docx",
    ];
    const DOC_PREFIXES: &[&str] = &[
        "license",
        "licence",
        "readme",
        "notice",
        "copying",
        "citation",
        "authors",
        "changelog",
    ];
    if CONFIG_NAMES.contains(&lower.as_str()) || CONFIG_EXT.contains(&ext) {
        Some(Kind::Config)
    } else if WEIGHT_EXT.contains(&ext) {
        Some(Kind::Weight)
    } else if CODE_EXT.contains(&ext) {
        Some(Kind::Code)
    } else if DOC_EXT.contains(&ext) || DOC_PREFIXES.iter().any(|p| lower.starts_with(p)) {
        Some(Kind::Doc)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_media_type_is_understood() {
        for kind in ["weight", "weight.config", "doc", "code", "dataset"] {
            for (p, want) in [
                ("raw", Packing::Raw),
                ("tar", Packing::Tar(Compression::None)),
                ("tar+gzip", Packing::Tar(Compression::Gzip)),
                ("tar+zstd", Packing::Tar(Compression::Zstd)),
            ] {
                for prefix in MODEL_PREFIXES {
                    let mt = format!("{prefix}{kind}.v1.{p}");
                    assert_eq!(
                        LayerFormat::of(&mt).unwrap(),
                        LayerFormat {
                            packing: want,
                            encrypted: false
                        },
                        "{mt}"
                    );
                    let enc = LayerFormat::of(&format!("{mt}+encrypted")).unwrap();
                    assert!(enc.encrypted);
                }
            }
        }
    }

    #[test]
    fn image_layers_and_odd_model_types_are_understood() {
        let f = LayerFormat::of("application/vnd.oci.image.layer.v1.tar+gzip+encrypted").unwrap();
        assert_eq!(
            f,
            LayerFormat {
                packing: Packing::Tar(Compression::Gzip),
                encrypted: true
            }
        );
        let f = LayerFormat::of("application/vnd.docker.image.rootfs.diff.tar.gzip").unwrap();
        assert_eq!(f.packing, Packing::Tar(Compression::Gzip));
        assert_eq!(
            LayerFormat::of("application/vnd.cncf.model.weight.v1.gguf")
                .unwrap()
                .packing,
            Packing::Raw
        );
        for bad in [
            "application/json",
            "application/vnd.cncf.model.weight.v1.tar+lz4",
            "application/vnd.cncf.model.weight",
        ] {
            assert!(LayerFormat::of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn qwen3_files_classify_like_modctl() {
        let cases = [
            ("config.json", Kind::Config),
            ("generation_config.json", Kind::Config),
            ("merges.txt", Kind::Config),
            ("tokenizer.json", Kind::Config),
            ("tokenizer_config.json", Kind::Config),
            ("vocab.json", Kind::Config),
            ("model.safetensors", Kind::Weight),
            ("LICENSE", Kind::Doc),
            ("README.md", Kind::Doc),
            ("convert.py", Kind::Code),
        ];
        for (name, kind) in cases {
            assert_eq!(classify(name), Some(kind), "{name}");
        }
        assert_eq!(classify("weird.xyz"), None);
    }

    #[test]
    fn modctl_metadata_annotation_parses() {
        let raw = r#"{"name":"model.safetensors","mode":420,"uid":1000,"gid":1000,"size":1503300328,"mtime":"2025-05-01T10:00:00.123456789+02:00","typeflag":0}"#;
        let mut d = Descriptor::new("x", Digest::sha256(b""), 0);
        d.annotations.insert(LEGACY_METADATA.into(), raw.into());
        let m = metadata(&d).unwrap().unwrap();
        assert_eq!((m.mode, m.size, m.typeflag), (0o644, 1503300328, 0));
        d.annotations.insert(ANNOTATION_METADATA.into(), "{".into());
        assert!(metadata(&d).is_err());
    }
}
