//! sha256 digests: parsing, and readers that hash (and count) what passes through them.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::Digest as _;

use crate::error::{Result, StoreError};

/// A validated `sha256:<64 lowercase hex>` digest; `hex()` is safe as a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(String);

impl Sha256 {
    /// Parse `sha256:<hex>`; `what` names the field for the error.
    pub fn parse(s: &str, what: &str) -> Result<Self> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| {
            StoreError::Unsupported(format!(
                "{what} digest {s:?} is not sha256 (only sha256 digests are supported)"
            ))
        })?;
        if !is_hex64(hex) {
            return Err(StoreError::BadJson {
                what: what.to_string(),
                reason: format!("digest {s:?} is not sha256:<64 lowercase hex digits>"),
            });
        }
        Ok(Sha256(hex.to_string()))
    }

    pub fn from_hex(hex: &str) -> Option<Self> {
        is_hex64(hex).then(|| Sha256(hex.to_string()))
    }

    pub fn of(bytes: &[u8]) -> Self {
        Sha256(to_hex(&sha2::Sha256::digest(bytes)))
    }

    pub fn hex(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

pub fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Hashes and counts every byte read through it.
pub struct HashReader<R> {
    inner: R,
    hasher: sha2::Sha256,
    count: u64,
    hash: bool,
}

impl<R: Read> HashReader<R> {
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: sha2::Sha256::new(),
            count: 0,
            hash: true,
        }
    }

    /// Only count (the digest of a reader made this way is meaningless).
    pub fn counting(inner: R) -> Self {
        HashReader {
            hash: false,
            ..HashReader::new(inner)
        }
    }

    /// Read the rest to EOF (hashing it) and return (digest, total bytes).
    pub fn finish(&mut self) -> io::Result<(Sha256, u64)> {
        io::copy(self, &mut io::sink())?;
        let d = Sha256(to_hex(&self.hasher.clone().finalize()));
        Ok((d, self.count))
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.hash {
            self.hasher.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
}

/// Counts bytes into a shared counter and fails once it passes a limit.
pub struct LimitReader<R> {
    inner: R,
    used: Arc<AtomicU64>,
    limit: u64,
}

impl<R: Read> LimitReader<R> {
    pub fn new(inner: R, used: Arc<AtomicU64>, limit: u64) -> Self {
        LimitReader { inner, used, limit }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// The error a [`LimitReader`] returns; recognized by the unpacker.
#[derive(Debug)]
pub struct LimitExceeded;

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unpacked size limit exceeded")
    }
}

impl std::error::Error for LimitExceeded {}

impl<R: Read> Read for LimitReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.used.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if total > self.limit {
            return Err(io::Error::other(LimitExceeded));
        }
        Ok(n)
    }
}

pub fn is_limit(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<LimitExceeded>())
}
