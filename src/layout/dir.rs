//! skopeo's `dir:` transport (containers/image `directory` package, version 1.1): a
//! `manifest.json`, a `version` file, and each blob stored under its hex digest (sha256) or
//! `<algorithm>-<hex>` for other algorithms.

use std::path::PathBuf;

use super::{io_err, open_blob, read_small, write_atomic, write_blob, LayoutError};
use crate::digest::{Algorithm, Digest};
use crate::manifest::{Descriptor, MAX_MANIFEST_BYTES};
use crate::registry::BlobReader;

const VERSION: &str = "Directory Transport Version: 1.1\n";

#[derive(Clone, Debug)]
pub struct DirLayout {
    dir: PathBuf,
}

impl DirLayout {
    pub fn new(dir: PathBuf) -> DirLayout {
        DirLayout { dir }
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        match digest.algorithm() {
            Algorithm::Sha256 => self.dir.join(digest.hex()),
            other => self.dir.join(format!("{}-{}", other.name(), digest.hex())),
        }
    }

    pub async fn manifest(&self) -> Result<(Vec<u8>, Digest), LayoutError> {
        use tokio::io::AsyncReadExt;
        let path = self.dir.join("manifest.json");
        let file = tokio::fs::File::open(&path).await.map_err(io_err(&path))?;
        if !file.metadata().await.map_err(io_err(&path))?.is_file() {
            return Err(io_err(&path)(std::io::Error::other("not a regular file")));
        }
        let mut raw = Vec::new();
        file.take(MAX_MANIFEST_BYTES as u64 + 1)
            .read_to_end(&mut raw)
            .await
            .map_err(io_err(&path))?;
        // An oversize manifest is refused by the parser with its size.
        let digest = Digest::sha256(&raw);
        Ok((raw, digest))
    }

    pub async fn read_small_blob(
        &self,
        digest: &Digest,
        limit: u64,
    ) -> Result<Vec<u8>, LayoutError> {
        read_small(&self.dir, &self.blob_path(digest), digest, limit).await
    }

    pub async fn blob(&self, desc: &Descriptor, offset: u64) -> Result<BlobReader, LayoutError> {
        open_blob(
            &self.dir,
            &self.blob_path(&desc.digest),
            &desc.digest,
            offset,
        )
        .await
    }

    pub async fn has_blob(&self, digest: &Digest) -> Result<bool, LayoutError> {
        Ok(self.blob_path(digest).is_file())
    }

    pub async fn put_blob(&self, desc: &Descriptor, reader: BlobReader) -> Result<(), LayoutError> {
        self.init()?;
        write_blob(
            &self.dir,
            &self.dir,
            Some(desc),
            |d| self.blob_path(d),
            reader,
        )
        .await?;
        Ok(())
    }

    /// Stores a blob whose digest is only known once it was read.
    pub async fn put_blob_streamed(
        &self,
        reader: BlobReader,
    ) -> Result<(Digest, u64), LayoutError> {
        self.init()?;
        write_blob(&self.dir, &self.dir, None, |d| self.blob_path(d), reader).await
    }

    pub async fn put_manifest(&self, raw: &[u8], _media_type: &str) -> Result<Digest, LayoutError> {
        self.init()?;
        write_atomic(&self.dir.join("manifest.json"), raw)?;
        Ok(Digest::sha256(raw))
    }

    fn init(&self) -> Result<(), LayoutError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let version = self.dir.join("version");
        if !version.exists() {
            write_atomic(&version, VERSION.as_bytes())?;
        }
        Ok(())
    }
}
