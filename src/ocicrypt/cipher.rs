//! `AES_256_CTR_HMAC_SHA256` (ocicrypt.md §4): AES-256-CTR with the nonce as the full 128-bit
//! big-endian initial counter, and HMAC-SHA256 over the whole ciphertext with the same key.
//!
//! Both directions are streaming readers. The HMAC is only known at the end of the stream, so
//! a [`DecryptingReader`] must be [`finish`](DecryptingReader::finish)ed: that drains what the
//! consumer left unread and compares the tag in constant time (ocicrypt.md §8.1).

use std::fmt;
use std::io::{self, Read};

use aws_lc_rs::cipher::{
    DecryptionContext, EncryptionContext, StreamingDecryptingKey, StreamingEncryptingKey,
    UnboundCipherKey, AES_256,
};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use zeroize::Zeroizing;

/// The cipher id in pubopts.
pub const CIPHER_ID: &str = "AES_256_CTR_HMAC_SHA256";
pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 16;
pub const HMAC_LEN: usize = 32;

/// Ciphertext is processed in pieces of this size.
const CHUNK: usize = 256 * 1024;

/// A layer's symmetric key and nonce. Zeroized on drop; `Debug` shows nothing secret.
#[derive(Clone)]
pub struct LayerKey {
    key: Zeroizing<[u8; KEY_LEN]>,
    nonce: [u8; NONCE_LEN],
}

impl fmt::Debug for LayerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LayerKey(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CipherError {
    #[error("the layer key is {0} bytes, not {KEY_LEN}")]
    KeyLength(usize),
    #[error("the nonce is {0} bytes, not {NONCE_LEN}")]
    NonceLength(usize),
    #[error("the HMAC in pubopts is {0} bytes, not {HMAC_LEN}")]
    HmacLength(usize),
    #[error("the system random number generator failed")]
    Random,
}

impl LayerKey {
    pub fn new(key: &[u8], nonce: &[u8]) -> Result<LayerKey, CipherError> {
        let key: [u8; KEY_LEN] = key
            .try_into()
            .map_err(|_| CipherError::KeyLength(key.len()))?;
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| CipherError::NonceLength(nonce.len()))?;
        Ok(LayerKey {
            key: Zeroizing::new(key),
            nonce,
        })
    }

    /// A fresh random key and nonce, as every encrypted layer gets.
    pub fn generate() -> Result<LayerKey, CipherError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(key.as_mut()).map_err(|_| CipherError::Random)?;
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| CipherError::Random)?;
        Ok(LayerKey { key, nonce })
    }

    pub fn key_bytes(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    pub fn nonce(&self) -> &[u8; NONCE_LEN] {
        &self.nonce
    }

    fn hmac_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, self.key.as_ref())
    }

    fn cipher_key(&self) -> io::Result<UnboundCipherKey> {
        UnboundCipherKey::new(&AES_256, self.key.as_ref()).map_err(|_| crypto_failure())
    }
}

fn crypto_failure() -> io::Error {
    io::Error::other("AES-CTR failed inside aws-lc")
}

/// Why a layer's ciphertext was rejected at the end of the stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("HMAC mismatch: the ciphertext is not what was encrypted (tampered, or a wrong key)")]
pub struct HmacMismatch;

/// Proof that a layer's HMAC matched; only [`HmacVerifier::finish`] mints one.
#[derive(Debug)]
pub struct HmacVerified(());

/// HMAC-SHA256 over a layer's ciphertext, pushed in order, checked in constant time at the end.
pub struct HmacVerifier {
    mac: hmac::Context,
    expected: [u8; HMAC_LEN],
}

impl HmacVerifier {
    pub fn new(key: &LayerKey, expected_hmac: &[u8]) -> Result<HmacVerifier, CipherError> {
        let expected: [u8; HMAC_LEN] = expected_hmac
            .try_into()
            .map_err(|_| CipherError::HmacLength(expected_hmac.len()))?;
        Ok(HmacVerifier {
            mac: hmac::Context::with_key(&key.hmac_key()),
            expected,
        })
    }

    pub fn update(&mut self, ciphertext: &[u8]) {
        self.mac.update(ciphertext);
    }

    pub fn finish(self) -> Result<HmacVerified, HmacMismatch> {
        let tag = self.mac.sign();
        match verify_slices_are_equal(tag.as_ref(), &self.expected) {
            Ok(()) => Ok(HmacVerified(())),
            Err(_) => Err(HmacMismatch),
        }
    }
}

/// AES-256-CTR keystream applied to consecutive pieces of one layer.
pub struct CtrDecryptor {
    cipher: StreamingDecryptingKey,
}

impl CtrDecryptor {
    pub fn new(key: &LayerKey) -> io::Result<CtrDecryptor> {
        let ctx = DecryptionContext::Iv128(FixedLength::from(*key.nonce()));
        let cipher =
            StreamingDecryptingKey::ctr(key.cipher_key()?, ctx).map_err(|_| crypto_failure())?;
        Ok(CtrDecryptor { cipher })
    }

    /// Decrypts `input` into the front of `out`, which must be at least 16 bytes longer (aws-lc
    /// wants a block of slack, though CTR writes exactly `input.len()` bytes).
    pub fn apply(&mut self, input: &[u8], out: &mut [u8]) -> io::Result<()> {
        let update = self
            .cipher
            .less_safe_update(input, out)
            .map_err(|_| crypto_failure())?;
        if update.written().len() != input.len() {
            return Err(crypto_failure());
        }
        Ok(())
    }
}

/// Decrypts a ciphertext stream while computing its HMAC.
pub struct DecryptingReader<R> {
    inner: R,
    cipher: CtrDecryptor,
    mac: HmacVerifier,
    ciphertext: Vec<u8>,
    plain: Zeroizing<Vec<u8>>,
    plain_pos: usize,
    plain_len: usize,
}

impl<R: Read> DecryptingReader<R> {
    pub fn new(inner: R, key: &LayerKey, expected_hmac: &[u8]) -> io::Result<Self> {
        let mac = HmacVerifier::new(key, expected_hmac)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(DecryptingReader {
            inner,
            cipher: CtrDecryptor::new(key)?,
            mac,
            ciphertext: vec![0; CHUNK],
            plain: Zeroizing::new(vec![0; CHUNK + 16]),
            plain_pos: 0,
            plain_len: 0,
        })
    }

    /// Drains the rest of the stream and checks the HMAC.
    pub fn finish(mut self) -> io::Result<Result<HmacVerified, HmacMismatch>> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.mac.finish())
    }
}

impl<R: Read> Read for DecryptingReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.plain_pos == self.plain_len {
            let n = self.inner.read(&mut self.ciphertext)?;
            if n == 0 {
                return Ok(0);
            }
            self.mac.update(&self.ciphertext[..n]);
            self.cipher.apply(&self.ciphertext[..n], &mut self.plain)?;
            self.plain_pos = 0;
            self.plain_len = n;
        }
        let n = out.len().min(self.plain_len - self.plain_pos);
        out[..n].copy_from_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
        self.plain_pos += n;
        Ok(n)
    }
}

/// Encrypts a plaintext stream; after the last byte, [`EncryptingReader::hmac`] gives the tag.
pub struct EncryptingReader<R> {
    inner: R,
    cipher: StreamingEncryptingKey,
    mac: hmac::Context,
    plain: Zeroizing<Vec<u8>>,
    out: Vec<u8>,
    out_pos: usize,
    out_len: usize,
    eof: bool,
}

impl<R: Read> EncryptingReader<R> {
    pub fn new(inner: R, key: &LayerKey) -> io::Result<Self> {
        let ctx = EncryptionContext::Iv128(FixedLength::from(*key.nonce()));
        let cipher = StreamingEncryptingKey::less_safe_ctr(key.cipher_key()?, ctx)
            .map_err(|_| crypto_failure())?;
        Ok(EncryptingReader {
            inner,
            cipher,
            mac: hmac::Context::with_key(&key.hmac_key()),
            plain: Zeroizing::new(vec![0; CHUNK]),
            out: vec![0; CHUNK + 16],
            out_pos: 0,
            out_len: 0,
            eof: false,
        })
    }

    /// The HMAC of all ciphertext produced; `None` until the input was read to its end.
    pub fn hmac(self) -> Option<[u8; HMAC_LEN]> {
        if !self.eof {
            return None;
        }
        let tag = self.mac.sign();
        tag.as_ref().try_into().ok()
    }
}

impl<R: Read> Read for EncryptingReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.out_pos == self.out_len {
            let n = self.inner.read(&mut self.plain)?;
            if n == 0 {
                self.eof = true;
                return Ok(0);
            }
            let update = self
                .cipher
                .less_safe_update(&self.plain[..n], &mut self.out)
                .map_err(|_| crypto_failure())?;
            if update.written().len() != n {
                return Err(crypto_failure());
            }
            self.mac.update(&self.out[..n]);
            self.out_pos = 0;
            self.out_len = n;
        }
        let n = out.len().min(self.out_len - self.out_pos);
        out[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        crate::digest::unhex(s).unwrap()
    }

    /// ocicrypt.md §4.5, V1: exercises the 128-bit counter wrap in block 2.
    fn v1() -> (LayerKey, Vec<u8>, Vec<u8>, Vec<u8>) {
        let key = LayerKey::new(
            &unhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"),
            &unhex("fffffffffffffffffffffffffffffffe"),
        )
        .unwrap();
        let plain: Vec<u8> = (0u8..64).collect();
        let cipher = unhex("63e4b601b11b4edaf2e4f3d595c1294bf988f60e58b266cd4b9e0b60419249f1d2b122950e6cb9f781dab041f10359afc06c449d7e8ca9d29ecfa10a74ff0802");
        let mac = unhex("28837a5ef5b2326b4c19b5a60c2864db2165aa5ac7baa7cbf2e4605e5d62a8ff");
        (key, plain, cipher, mac)
    }

    #[test]
    fn the_spec_test_vector_encrypts_with_a_full_128_bit_counter() {
        let (key, plain, cipher, mac) = v1();
        let mut r = EncryptingReader::new(&plain[..], &key).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, cipher);
        assert_eq!(r.hmac().unwrap().to_vec(), mac);
    }

    #[test]
    fn the_spec_test_vector_decrypts_and_verifies() {
        let (key, plain, cipher, mac) = v1();
        let mut r = DecryptingReader::new(&cipher[..], &key, &mac).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, plain);
        assert!(r.finish().unwrap().is_ok());
    }

    #[test]
    fn one_flipped_ciphertext_bit_fails_the_hmac_even_if_the_reader_stopped_early() {
        let (key, _, mut cipher, mac) = v1();
        cipher[63] ^= 1;
        let mut r = DecryptingReader::new(&cipher[..], &key, &mac).unwrap();
        let mut first = [0u8; 10];
        r.read_exact(&mut first).unwrap();
        // `finish` drains the unread tail, where the flipped bit is.
        assert_eq!(r.finish().unwrap().unwrap_err(), HmacMismatch);
    }

    #[test]
    fn a_large_stream_round_trips_through_small_reads() {
        let key = LayerKey::generate().unwrap();
        let plain: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut enc = EncryptingReader::new(&plain[..], &key).unwrap();
        let mut cipher = Vec::new();
        let mut buf = [0u8; 777];
        loop {
            let n = enc.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            cipher.extend_from_slice(&buf[..n]);
        }
        assert_eq!(cipher.len(), plain.len());
        let mac = enc.hmac().unwrap();
        let mut dec = DecryptingReader::new(&cipher[..], &key, &mac).unwrap();
        let mut back = Vec::new();
        dec.read_to_end(&mut back).unwrap();
        assert_eq!(back, plain);
        assert!(dec.finish().unwrap().is_ok());
    }

    #[test]
    fn lengths_are_validated_and_keys_never_print() {
        assert_eq!(
            LayerKey::new(&[0; 31], &[0; 16]).unwrap_err(),
            CipherError::KeyLength(31)
        );
        assert_eq!(
            LayerKey::new(&[0; 32], &[0; 12]).unwrap_err(),
            CipherError::NonceLength(12)
        );
        let key = LayerKey::new(&[0xab; 32], &[0; 16]).unwrap();
        assert!(DecryptingReader::new(&b""[..], &key, &[0; 31]).is_err());
        assert_eq!(format!("{key:?}"), "LayerKey(<redacted>)");
    }
}
