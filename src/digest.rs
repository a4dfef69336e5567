//! Content digests (`sha256:<hex>`): the newtype every blob is addressed by, and the hashing
//! reader that proves a stream matched its descriptor.
//!
//! Only `sha256` is produced; `sha512` is accepted on read because the OCI image spec allows it.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use aws_lc_rs::digest::{self as lc, Context};

/// A validated content digest. Built only by parsing or hashing, so a `Digest` in hand is always
/// well-formed and safe to use as a file name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    fn lc(self) -> &'static lc::Algorithm {
        match self {
            Algorithm::Sha256 => &lc::SHA256,
            Algorithm::Sha512 => &lc::SHA512,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("malformed digest `{0}`: expected `sha256:` followed by 64 lowercase hex digits")]
    Malformed(String),
    #[error("unsupported digest algorithm in `{0}`: only sha256 and sha512 are supported")]
    UnsupportedAlgorithm(String),
}

impl Digest {
    /// SHA-256 of a byte slice.
    pub fn sha256(bytes: &[u8]) -> Digest {
        Digest::from_lc(Algorithm::Sha256, lc::digest(&lc::SHA256, bytes))
    }

    fn from_lc(algorithm: Algorithm, d: lc::Digest) -> Digest {
        Digest {
            algorithm,
            hex: hex(d.as_ref()),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part, which is how blobs are named on disk.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// A hasher for the same algorithm as this digest.
    pub fn hasher(&self) -> Hasher {
        Hasher::new(self.algorithm)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algo, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(s.into()))?;
        let algorithm = match algo {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ if !algo.is_empty() && algo.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                return Err(DigestError::UnsupportedAlgorithm(s.into()))
            }
            _ => return Err(DigestError::Malformed(s.into())),
        };
        let ok = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(DigestError::Malformed(s.into()));
        }
        Ok(Digest {
            algorithm,
            hex: hex.into(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental hasher (hardware-accelerated through aws-lc).
#[derive(Clone)]
pub struct Hasher {
    algorithm: Algorithm,
    ctx: Context,
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        Hasher {
            algorithm,
            ctx: Context::new(algorithm.lc()),
        }
    }

    pub fn sha256() -> Hasher {
        Hasher::new(Algorithm::Sha256)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.ctx.update(bytes);
    }

    pub fn finish(self) -> Digest {
        Digest::from_lc(self.algorithm, self.ctx.finish())
    }
}

/// What a [`VerifyingReader`] found wrong once the stream ended.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Mismatch {
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    Size { expected: u64, actual: u64 },
    #[error("digest mismatch: expected `{expected}`, got `{actual}`")]
    Digest { expected: Digest, actual: Digest },
}

/// Proof that a whole blob was read and matched its descriptor. Only
/// [`BlobVerifier::finish`] can mint one.
#[derive(Debug)]
pub struct Verified {
    _private: (),
}

/// Checks a blob against its descriptor as its bytes are pushed in, in order, from whichever
/// thread holds it: the pull pipeline hashes on a thread of its own.
pub struct BlobVerifier {
    expected: Digest,
    expected_size: u64,
    hasher: Hasher,
    read: u64,
}

impl BlobVerifier {
    pub fn new(expected: Digest, expected_size: u64) -> BlobVerifier {
        BlobVerifier {
            hasher: expected.hasher(),
            expected,
            expected_size,
            read: 0,
        }
    }

    /// Hashes `bytes`; fails as soon as the blob runs past its expected size, so a hostile
    /// source cannot feed an endless body.
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), Mismatch> {
        self.hasher.update(bytes);
        self.read += bytes.len() as u64;
        if self.read > self.expected_size {
            return Err(Mismatch::Size {
                expected: self.expected_size,
                actual: self.read,
            });
        }
        Ok(())
    }

    /// Bytes pushed so far.
    pub fn position(&self) -> u64 {
        self.read
    }

    /// Checks size and digest of everything pushed.
    pub fn finish(self) -> Result<Verified, Mismatch> {
        if self.read != self.expected_size {
            return Err(Mismatch::Size {
                expected: self.expected_size,
                actual: self.read,
            });
        }
        let actual = self.hasher.finish();
        if actual != self.expected {
            return Err(Mismatch::Digest {
                expected: self.expected,
                actual,
            });
        }
        Ok(Verified { _private: () })
    }
}

/// Reads a blob while hashing and counting it (a [`BlobVerifier`] on a reader). The digest is
/// checked in [`finish`](Self::finish), which drains whatever the consumer left unread.
pub struct VerifyingReader<R> {
    inner: R,
    verifier: BlobVerifier,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Digest, expected_size: u64) -> Self {
        VerifyingReader {
            inner,
            verifier: BlobVerifier::new(expected, expected_size),
        }
    }

    /// Bytes read so far.
    pub fn position(&self) -> u64 {
        self.verifier.position()
    }

    /// Drains the rest of the stream and checks size and digest.
    pub fn finish(mut self) -> io::Result<Result<Verified, Mismatch>> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.verifier.finish())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.verifier
            .update(&buf[..n])
            .map_err(|m| io::Error::new(io::ErrorKind::InvalidData, m))?;
        Ok(n)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Hex text to bytes; `None` unless every character is a hex digit and the length is even.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_bad_hex_is_refused() {
        assert_eq!(unhex(&hex(&[0, 0xab, 0xff])).unwrap(), vec![0, 0xab, 0xff]);
        for bad in ["a", "zz", "0g"] {
            assert!(unhex(bad).is_none(), "{bad}");
        }
    }

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn sha256_of_empty_input_is_the_well_known_value() {
        assert_eq!(Digest::sha256(b"").to_string(), EMPTY);
    }

    #[test]
    fn malformed_digests_are_refused() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            "sha256:ABC",
            "sha256:../../etc",
            ":abc",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
        assert!(matches!(
            "md5:abcd".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert_eq!(EMPTY.parse::<Digest>().unwrap().to_string(), EMPTY);
    }

    #[test]
    fn verifying_reader_detects_wrong_bytes_short_and_long_streams() {
        let d = Digest::sha256(b"hello");
        let ok = VerifyingReader::new(&b"hello"[..], d.clone(), 5);
        assert!(ok.finish().unwrap().is_ok());

        let wrong = VerifyingReader::new(&b"hellO"[..], d.clone(), 5);
        assert!(matches!(
            wrong.finish().unwrap(),
            Err(Mismatch::Digest { .. })
        ));

        let short = VerifyingReader::new(&b"hell"[..], d.clone(), 5);
        assert_eq!(
            short.finish().unwrap().unwrap_err(),
            Mismatch::Size {
                expected: 5,
                actual: 4
            }
        );

        let long = VerifyingReader::new(&b"hello!"[..], d, 5);
        assert!(long.finish().is_err());
    }
}
