//! Command-line flags. Every flag has a `MODELCRYPT_*` variable (see `env.rs`), so a pod spec
//! can configure the init container entirely through its environment.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{Parser, Subcommand};

use crate::env::*;

/// Pack, move and pull CNCF ModelPack model artifacts: streamed, verified, atomic.
///
/// References use skopeo's syntax: `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]` (or bare
/// `HOST/REPO:TAG`) for a registry, `oci:DIR[:TAG]` for an OCI image layout on disk, and
/// `dir:DIR` for skopeo's directory format.
#[derive(Debug, Parser)]
#[command(name = "modelcrypt", version, max_term_width = 100)]
pub struct Args {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Use plain HTTP, not HTTPS, for registries (for a local test registry). Default: off.
    #[arg(long, global = true, env = MODELCRYPT_PLAIN_HTTP, value_parser = BoolishValueParser::new())]
    pub plain_http: bool,

    /// Registry credentials file (Docker config.json or containers auth.json). Default:
    /// `REGISTRY_AUTH_FILE`, then `$XDG_RUNTIME_DIR/containers/auth.json`, then
    /// `~/.docker/config.json`.
    #[arg(long, global = true, env = MODELCRYPT_AUTHFILE, value_name = "FILE")]
    pub authfile: Option<PathBuf>,

    /// How to log on stderr: `text` for people, `json` (one object per line) for log
    /// collectors, or `auto`: JSON when stdout is not a terminal, as in a pod. Default: auto.
    #[arg(long, global = true, env = MODELCRYPT_LOG_FORMAT, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    /// Short for `--log-format json`.
    #[arg(long, global = true, env = MODELCRYPT_JSON_LOGS, value_parser = BoolishValueParser::new())]
    pub json_logs: bool,

    /// Log filter, e.g. `debug` or `modelcrypt=debug`. Default: `warn` for text, `info` for
    /// JSON.
    #[arg(long, global = true, env = MODELCRYPT_LOG, value_name = "FILTER")]
    pub log: Option<String>,

    /// Never draw progress bars. Default: bars when stderr is a terminal.
    #[arg(long, global = true, env = MODELCRYPT_NO_PROGRESS, value_parser = BoolishValueParser::new())]
    pub no_progress: bool,
}

impl GlobalArgs {
    /// Whether logs (and errors) are JSON lines.
    pub fn json(&self) -> bool {
        match self.log_format {
            _ if self.json_logs => true,
            LogFormat::Json => true,
            LogFormat::Text => false,
            LogFormat::Auto => !std::io::stdout().is_terminal(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pack a model directory as a ModelPack artifact and push it.
    ///
    /// One layer per file, classified as modctl does (config, weights, code, docs), with the
    /// `org.cncf.model.filepath` and `org.cncf.model.file.metadata+json` annotations. Hidden
    /// files and directories (such as `.cache/` and `.gitattributes`) are skipped.
    ///
    /// Example: modelcrypt pack ./Qwen3-0.6B oci:/var/lib/models:qwen3
    Pack(PackArgs),
    /// Copy an artifact between registries, layouts and directories, unchanged.
    ///
    /// The manifest is copied byte for byte, so its digest stays the same.
    Copy(CopyArgs),
    /// Stream an artifact into a directory: the init container's job.
    ///
    /// Every layer is fetched concurrently, verified against its digest, and extracted safely
    /// into a staging directory next to `--to`; only when every layer verified is the staging
    /// directory renamed to `--to`, with a `.modelcrypt-complete` marker inside. A re-run for
    /// the same manifest is a quick no-op; on any failure nothing is left at `--to`.
    ///
    /// Example: modelcrypt pull oci:/var/lib/models:qwen3 --to /models/qwen3
    Pull(PullArgs),
    /// Show an artifact's manifest, config and layers without fetching the layers.
    Inspect(InspectArgs),
    /// Encrypt an artifact's layers (ocicrypt) and write it to DEST.
    ///
    /// Every layer gets a fresh AES-256-CTR key, wrapped for each recipient: `jwe:PUBKEY`
    /// (RSA or EC public key, PEM, DER or JWK; skopeo can decrypt these) and `kbs:///R/T/G`
    /// (a Confidential Containers keyprovider annotation under a 32-byte KEK that the key
    /// broker holds at that resource; the KEK itself comes from `--kek`). The config is not
    /// encrypted.
    ///
    /// Example: modelcrypt encrypt oci:models:qwen3 docker://reg/models/qwen3:enc
    ///   --recipient jwe:pub.pem --recipient kbs:///default/key/qwen3 --kek qwen3.kek
    Encrypt(EncryptArgs),
    /// Decrypt an artifact's encrypted layers and write the plain artifact to DEST.
    Decrypt(DecryptArgs),
    /// Generate key material: an RSA 4096 or EC P-256 pair (PEM, for `jwe:` recipients and
    /// `--decryption-key`) or a random 32-byte KEK. Private files are written with mode 0600.
    Keygen(KeygenArgs),
}

#[derive(Debug, clap::Args)]
pub struct PackArgs {
    /// The model directory, e.g. a Hugging Face download.
    pub model_dir: PathBuf,
    /// Where to push: `docker://…`, `oci:DIR[:TAG]` or `dir:DIR`.
    pub dest: String,
    /// Pack each file as a one-file tar layer (`…v1.tar`) instead of raw bytes (`…v1.raw`).
    /// Default: raw, like modctl.
    #[arg(long, env = MODELCRYPT_TAR, value_parser = BoolishValueParser::new())]
    pub tar: bool,
    /// Reproducible output: no creation time, mtimes at the epoch, uid and gid 0, so the same
    /// files always give the same manifest digest. Default: off.
    #[arg(long, env = MODELCRYPT_REPRODUCIBLE, value_parser = BoolishValueParser::new())]
    pub reproducible: bool,
    /// The model's name in the config. Default: the directory's name.
    #[arg(long, env = MODELCRYPT_NAME)]
    pub name: Option<String>,
    /// Use OCI image layer media types (`application/vnd.oci.image.layer.v1.tar`, implies
    /// `--tar`) for consumers such as skopeo's encryptor and CoCo's image-rs that know no
    /// others. Default: ModelPack media types.
    #[arg(long, env = MODELCRYPT_OCI_MEDIA_TYPES, value_parser = BoolishValueParser::new())]
    pub oci_media_types: bool,
    /// Layers hashed and uploaded at once. Default: 3.
    #[arg(long, env = MODELCRYPT_CONCURRENCY, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
}

#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// The artifact to copy.
    pub src: String,
    /// Where to copy it.
    pub dest: String,
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The artifact to pull, e.g. `docker://registry:5000/models/qwen3:v1` or
    /// `oci:/layouts/models:qwen3`.
    #[arg(env = MODELCRYPT_SOURCE)]
    pub src: String,
    /// The destination directory. It must not be a mount point: use a directory inside the
    /// volume, such as `/models/qwen3`.
    #[arg(long, env = MODELCRYPT_TO, value_name = "DIR")]
    pub to: PathBuf,
    /// Layers fetched at once. Large layers (64 MiB and up, biggest first) take at most one
    /// per core of them, the rest serve small layers, so a small layer never waits behind a
    /// large one; 1 means one layer at a time. Default: 4.
    #[arg(long, env = MODELCRYPT_CONCURRENCY, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Range requests at once for one large blob (16 MiB and up) from a registry. Each blob
    /// starts as one request; if the pull then waits for the network most of the time (a
    /// registry or object store that caps each connection, a small window over a long round
    /// trip), it is split into 4 MiB segments fetched over up to N connections and delivered
    /// in order (4 pulled 2.2x as fast through 80 MB/s per connection). Segments fetched ahead
    /// share 16 MiB per pull. 1 keeps every blob to one request. Default: 4.
    #[arg(long, env = MODELCRYPT_PARALLEL_RANGES, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=5))]
    pub parallel_ranges: u16,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// With `--decryption-key` or `--kek`, also accept layers that are not encrypted (an
    /// artifact encrypted with `encrypt --encrypt-layer`). Default: refuse them, so a plain
    /// layer cannot be slipped into an encrypted model.
    #[arg(long, env = MODELCRYPT_ALLOW_PLAIN_LAYERS, value_parser = BoolishValueParser::new())]
    pub allow_plain_layers: bool,
    /// Keep the artifact's permission bits exactly. Default: files and directories readable
    /// (and executables executable) by every user, writable only by the owner, so vLLM reads
    /// the model whatever user it runs as, and cannot change it.
    #[arg(long, env = MODELCRYPT_PRESERVE_MODES, value_parser = BoolishValueParser::new())]
    pub preserve_modes: bool,
}

/// Keys that open encrypted layers.
#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// A private key for JWE recipients: PEM or DER (PKCS#8, PKCS#1, SEC1) or JWK. A password
    /// for an encrypted PEM goes after a colon, as in skopeo: `KEY:pass=…`, `KEY:file=PWFILE`
    /// or `KEY:env=VAR`. Repeatable; each key is tried on each layer.
    #[arg(long = "decryption-key", value_name = "KEY", env = MODELCRYPT_DECRYPTION_KEY, value_delimiter = ',')]
    pub decryption_keys: Vec<String>,
    /// A key-encryption key file (32 raw bytes, or hex or base64 of them) that opens
    /// Confidential Containers keyprovider annotations. Repeatable.
    #[arg(long = "kek", value_name = "FILE", env = MODELCRYPT_KEK, value_delimiter = ',')]
    pub keks: Vec<PathBuf>,
}

/// Where `kbs://` keys come from: a key broker we attest to, or the pod's Confidential Data
/// Hub. With either, every `kbs:///R/T/G` recipient's KEK is fetched (once per resource), and
/// `--decryption-key kbs:///R/T/G` fetches a private key.
#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    /// The key broker (Trustee KBS, protocol 0.4.0), e.g. `http://kbs:8080`.
    #[arg(long, value_name = "URL", env = MODELCRYPT_KBS, conflicts_with = "cdh")]
    pub kbs: Option<String>,
    /// The TEE to attest with: `auto` (TDX or SEV-SNP, detected through configfs-tsm),
    /// `tdx`, `snp`, or `sample` (no hardware; proves nothing, for tests and demos only).
    /// Default: auto, which never falls back to `sample`.
    #[arg(long, value_name = "TEE", env = MODELCRYPT_TEE, default_value = "auto")]
    pub tee: String,
    /// The ephemeral key the broker encrypts its replies to: `ec` (P-256, `ECDH-ES+A256KW`)
    /// or `rsa` (2048, `RSA-OAEP-256`). Default: ec.
    #[arg(long, value_name = "KIND", env = MODELCRYPT_TEE_KEY, default_value = "ec", value_parser = ["ec", "rsa"])]
    pub tee_key: String,
    /// Allow `--kbs http://` to a host other than this machine. The key broker's replies are
    /// encrypted to our key, but nothing authenticates the broker over plain HTTP: anyone on
    /// the path can answer in its place. For demos on a private network only. Default: off.
    #[arg(long, env = MODELCRYPT_DANGEROUS_KBS_PLAIN_HTTP, value_parser = BoolishValueParser::new())]
    pub dangerous_kbs_plain_http: bool,
    /// Seconds one key broker request may take. A broker that took a request and went
    /// silent is not asked again. Default: 30.
    #[arg(long, value_name = "SECONDS", env = MODELCRYPT_KBS_TIMEOUT, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub kbs_timeout: u64,
    /// A PEM CA certificate for an HTTPS key broker. Default: the system's roots.
    #[arg(long, value_name = "FILE", env = MODELCRYPT_KBS_CERT)]
    pub kbs_cert: Option<PathBuf>,
    /// Ask the Confidential Data Hub of a Confidential Containers pod instead (no attestation
    /// by us). It must be on this machine: it answers with keys in the clear. Default URL:
    /// http://127.0.0.1:8006.
    #[arg(long, value_name = "URL", env = MODELCRYPT_CDH, num_args = 0..=1, default_missing_value = "http://127.0.0.1:8006")]
    pub cdh: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct EncryptArgs {
    /// The artifact to encrypt.
    pub src: String,
    /// Where to write the encrypted artifact.
    pub dest: String,
    /// Who may decrypt: `jwe:PUBKEY_FILE` or `kbs:///REPO/TYPE/TAG`. Repeatable, any mix.
    #[arg(long = "recipient", value_name = "RECIPIENT", required = true)]
    pub recipients: Vec<String>,
    /// The KEK for `kbs://` recipients: one for all of them, or one per recipient in order.
    #[arg(long = "kek", value_name = "FILE")]
    pub keks: Vec<PathBuf>,
    /// Encrypt only this layer: an index (0-based, negative counts from the end, as skopeo's
    /// `--encrypt-layer`) or a file path from `org.cncf.model.filepath`. Repeatable. Default:
    /// every layer.
    #[arg(
        long = "encrypt-layer",
        value_name = "INDEX|PATH",
        allow_hyphen_values = true
    )]
    pub layers: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct DecryptArgs {
    /// The encrypted artifact.
    pub src: String,
    /// Where to write the plain artifact.
    pub dest: String,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KeyKind {
    /// RSA 4096: PKCS#8 private key and SPKI public key, PEM.
    Rsa,
    /// EC P-256: PKCS#8 private key and SPKI public key, PEM.
    Ec,
    /// 32 random bytes, raw: what coco_keyprovider and the key broker store.
    Kek,
}

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// What to generate.
    #[arg(long = "type", value_enum, default_value = "rsa")]
    pub kind: KeyKind,
    /// Output file. For key pairs this is the private key; the public key goes to `OUT.pub`.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Replace existing files. Default: refuse.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The artifact to inspect.
    pub reference: String,
    /// Print JSON (for scripts) instead of a table. Default: off.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("modelcrypt").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let a = parse(&["--plain-http", "pull", "oci:x", "--to", "/m"]);
        assert!(a.global.plain_http);
        let b = parse(&["pull", "oci:x", "--to", "/m", "--plain-http", "--json-logs"]);
        assert!(b.global.plain_http && b.global.json_logs);
    }

    #[test]
    fn pull_requires_a_destination_and_bounds_concurrency() {
        assert!(Args::try_parse_from(["modelcrypt", "pull", "oci:x"]).is_err());
        assert!(Args::try_parse_from([
            "modelcrypt",
            "pull",
            "oci:x",
            "--to",
            "/m",
            "--concurrency",
            "0"
        ])
        .is_err());
        let Command::Pull(p) = parse(&["pull", "oci:x", "--to", "/m"]).command else {
            panic!()
        };
        assert_eq!(p.concurrency, 4);
    }

    #[test]
    fn pack_flags_parse() {
        let Command::Pack(p) = parse(&[
            "pack",
            "dir",
            "oci:o:t",
            "--tar",
            "--reproducible",
            "--name",
            "q",
        ])
        .command
        else {
            panic!()
        };
        assert!(p.tar && p.reproducible);
        assert_eq!(p.name.as_deref(), Some("q"));
    }
}
