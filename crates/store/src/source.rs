//! Where an image comes from: an OCI image layout (directory or tar) or a `docker save` tar,
//! and which manifest, config and layer blobs make it up.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;

use crate::digest::{HashReader, Sha256};
use crate::error::{Result, StoreError};

/// Largest manifest, index or config accepted.
const MAX_JSON: u64 = 16 << 20;
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// An image source: a directory (held open; members are opened below it, never through a
/// symlink, and must be regular files), or a tar read in place (indexed once, no extraction).
pub enum Source {
    Dir(PathBuf, std::os::fd::OwnedFd),
    Tar {
        path: PathBuf,
        /// Normalized member name → (data offset, size).
        entries: HashMap<String, (u64, u64)>,
    },
}

/// Lexically normalize a relative member name; `None` if it escapes or is absolute.
fn normalize(name: &str) -> Option<String> {
    if name.starts_with('/') {
        return None;
    }
    let mut out: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

impl Source {
    pub fn open(src: &Path) -> Result<Source> {
        let meta =
            std::fs::metadata(src).map_err(StoreError::io("cannot open image source", src))?;
        if meta.is_dir() {
            let dir = File::open(src).map_err(StoreError::io("cannot open image source", src))?;
            return Ok(Source::Dir(src.to_owned(), dir.into()));
        }
        let bad = |reason: String| StoreError::BadSource {
            src: src.to_owned(),
            reason,
        };
        let file = File::open(src).map_err(StoreError::io("cannot open image source", src))?;
        let file_len = meta.len();
        let mut ar = tar::Archive::new(file);
        let mut entries = HashMap::new();
        let mut links: Vec<(String, String)> = Vec::new();
        // The tar crate's messages quote the header bytes it could not parse: never pass them
        // on (a binary file would print binary, a text file its content).
        let mut last = String::new();
        let not_tar = |last: &str| {
            bad(if last.is_empty() {
                "not a tar archive: an OCI image layout directory, an OCI archive (tar) or a \
                 `docker save` tar was expected"
                    .to_string()
            } else {
                format!(
                    "{} tar archive: the header after entry {last:?} cannot be read",
                    if file_len % 512 == 0 {
                        "corrupt"
                    } else {
                        "truncated (its size is not a multiple of 512 bytes) or corrupt"
                    }
                )
            })
        };
        for e in ar.entries_with_seek().map_err(|_| not_tar(""))? {
            let e = e.map_err(|_| not_tar(&last))?;
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            if e.raw_file_position().saturating_add(e.size()) > file_len {
                return Err(bad(format!(
                    "truncated: entry {name:?} ends {} bytes past the end of the file (copy                      the archive again)",
                    e.raw_file_position().saturating_add(e.size()) - file_len
                )));
            }
            last.clone_from(&name);
            let Some(name) = normalize(&name) else {
                continue;
            };
            match e.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    entries.insert(name, (e.raw_file_position(), e.size()));
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = e
                        .link_name_bytes()
                        .map(|t| String::from_utf8_lossy(&t).into_owned())
                        .unwrap_or_default();
                    let resolved = if e.header().entry_type() == tar::EntryType::Link {
                        normalize(&target)
                    } else {
                        let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                        normalize(&format!("{dir}/{target}"))
                    };
                    if let Some(r) = resolved {
                        links.push((name, r));
                    }
                }
                _ => {}
            }
        }
        // docker save links duplicate layers to the first copy.
        for _ in 0..8 {
            for (name, target) in &links {
                if let Some(v) = entries.get(target).copied() {
                    entries.entry(name.clone()).or_insert(v);
                }
            }
        }
        if entries.is_empty() {
            return Err(bad("the archive holds no files".into()));
        }
        Ok(Source::Tar {
            path: src.to_owned(),
            entries,
        })
    }

    fn path(&self) -> &Path {
        match self {
            Source::Dir(p, _) | Source::Tar { path: p, .. } => p,
        }
    }

    /// A member of a directory source: a regular file below it, reached without following a
    /// symlink (a blob symlinked to `/dev/zero` or to a host file is refused), and its size.
    fn dir_member(dir: &std::os::fd::OwnedFd, n: &str) -> std::io::Result<(File, u64)> {
        use std::os::fd::AsRawFd;
        let f = File::from(crate::sys::open_beneath(dir.as_raw_fd(), n)?);
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        Ok((f, meta.len()))
    }

    pub fn has(&self, name: &str) -> bool {
        self.probe(name).unwrap_or(false)
    }

    /// Whether member `name` is there: `Ok(false)` only if it is absent; a member that is
    /// there but cannot be read (permission denied, not a regular file) is an error that says
    /// so, not "missing".
    pub fn probe(&self, name: &str) -> Result<bool> {
        match (self, normalize(name)) {
            (Source::Dir(p, d), Some(n)) => match Source::dir_member(d, &n) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(StoreError::BadSource {
                    src: p.to_owned(),
                    reason: format!("{name:?} cannot be read: {e}"),
                }),
            },
            (Source::Tar { entries, .. }, Some(n)) => Ok(entries.contains_key(&n)),
            _ => Ok(false),
        }
    }

    /// Open a member for reading, with its size.
    pub fn open_member(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64)> {
        let missing = || StoreError::BadSource {
            src: self.path().to_owned(),
            reason: format!("{name:?} is missing (the image is incomplete)"),
        };
        let n = normalize(name).ok_or_else(missing)?;
        match self {
            Source::Dir(p, d) => {
                let (f, len) = Source::dir_member(d, &n).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => missing(),
                    _ => StoreError::BadSource {
                        src: p.to_owned(),
                        reason: format!(
                            "{name:?} cannot be used: {e} (members of an image directory must \
                             be regular files, not symlinks)"
                        ),
                    },
                })?;
                // Never more than the size it had when opened, even if it grows.
                Ok((Box::new(f.take(len)), len))
            }
            Source::Tar { path, entries } => {
                let (off, size) = *entries.get(&n).ok_or_else(missing)?;
                let mut f =
                    File::open(path).map_err(StoreError::io("cannot open image source", path))?;
                f.seek(SeekFrom::Start(off))
                    .map_err(StoreError::io("cannot seek in", path))?;
                Ok((Box::new(f.take(size)), size))
            }
        }
    }

    /// Read a small member whole, checking its digest and size when known.
    pub fn read_verified(
        &self,
        name: &str,
        what: &str,
        digest: Option<&Sha256>,
        size: Option<u64>,
    ) -> Result<(Vec<u8>, Sha256)> {
        let (r, len) = self.open_member(name)?;
        if len > MAX_JSON {
            return Err(StoreError::Unsupported(format!(
                "{what} is {len} bytes (limit {MAX_JSON})"
            )));
        }
        let mut hr = HashReader::new(r.take(MAX_JSON));
        let mut buf = Vec::new();
        hr.read_to_end(&mut buf)
            .map_err(StoreError::io("cannot read", self.path().join(name)))?;
        let (d, n) = hr
            .finish()
            .map_err(StoreError::io("cannot read", self.path().join(name)))?;
        if let Some(size) = size {
            if n != size {
                return Err(StoreError::Truncated {
                    what: what.to_string(),
                    expected: size,
                    actual: n,
                });
            }
        }
        if let Some(want) = digest {
            if *want != d {
                return Err(StoreError::DigestMismatch {
                    what: what.to_string(),
                    expected: want.to_string(),
                    actual: d.to_string(),
                });
            }
        }
        Ok((buf, d))
    }
}

/// One layer as the image describes it.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    /// Member name of the blob in the source.
    pub blob: String,
    /// Expected blob digest (always for OCI; for docker save only when the name carries it).
    pub digest: Option<Sha256>,
    /// Expected blob size (OCI descriptors).
    pub size: Option<u64>,
    pub media_type: Option<String>,
    /// sha256 of the uncompressed tar, from the image config.
    pub diff_id: Sha256,
}

/// A resolved image: what to import.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// A name found in the source (OCI ref.name annotation, docker RepoTags).
    pub name: Option<String>,
    pub manifest_digest: Option<Sha256>,
    pub config_digest: Sha256,
    /// Bottom-first.
    pub layers: Vec<LayerSpec>,
    /// What a runtime needs from the image config.
    pub config: crate::config::ImageConfig,
}

fn json_err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::BadJson {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

fn blob_name(d: &Sha256) -> String {
    format!("blobs/sha256/{}", d.hex())
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Find the image in `src`; `want` picks among several (by ref name or tag).
pub fn resolve(src: &Source, want: Option<&str>) -> Result<ImageSpec> {
    if src.probe("index.json")? {
        resolve_oci(src, want)
    } else if src.probe("manifest.json")? {
        resolve_docker(src, want)
    } else {
        Err(StoreError::BadSource {
            src: src.path().to_owned(),
            reason:
                "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)"
                    .into(),
        })
    }
}

/// Whether a name found in the source is the one asked for: the same, the same tag, or the
/// same reference once both are normalised (`debian` picks `docker.io/library/debian:latest`).
fn matches_name(name: &str, want: &str) -> bool {
    let norm = crate::reference::normalize;
    name == want
        || name.rsplit_once(':').is_some_and(|(_, tag)| tag == want)
        || norm(name).is_ok_and(|n| norm(want).is_ok_and(|w| n == w))
}

/// An OCI image layout: the manifest `want` names (or the only one), for this host's platform
/// when it is an image index, then its config and layers.
fn resolve_oci(src: &Source, want: Option<&str>) -> Result<ImageSpec> {
    let (name, desc) = pick_manifest(src, want)?;
    let desc = platform_manifest(src, desc)?;
    oci_image(src, name, &desc)
}

/// The descriptor in `index.json` that `want` names (by ref name or tag), or its only one; and
/// the name it carries.
fn pick_manifest(
    src: &Source,
    want: Option<&str>,
) -> Result<(Option<String>, oci_spec::image::Descriptor)> {
    let (bytes, _) = src.read_verified("index.json", "index.json", None, None)?;
    let index = ImageIndex::from_reader(&bytes[..]).map_err(|e| json_err("index.json", e))?;
    let descs = index.manifests();
    let named = |d: &oci_spec::image::Descriptor| {
        d.annotations()
            .as_ref()
            // docker save (25+) puts the full name here and only the tag in ref.name.
            .and_then(|a| a.get(CONTAINERD_NAME).or_else(|| a.get(REF_NAME)))
            .cloned()
    };
    let by_name = want.and_then(|w| {
        descs
            .iter()
            .find(|d| named(d).is_some_and(|n| matches_name(&n, w)))
    });
    let chosen = match by_name {
        Some(d) => Some(d),
        None if descs.len() == 1 => descs.first(),
        None => None,
    };
    let Some(desc) = chosen else {
        let names: Vec<String> = descs.iter().filter_map(named).collect();
        return Err(StoreError::BadSource {
            src: src.path().to_owned(),
            reason: format!(
                "index.json lists {} manifests; pick one with --name (names: {names:?})",
                descs.len()
            ),
        });
    };
    Ok((named(desc), desc.clone()))
}

/// Follow image indexes (multi-platform images, up to 4 deep) to the manifest for the host's
/// platform; a manifest descriptor is returned as it is.
fn platform_manifest(
    src: &Source,
    mut desc: oci_spec::image::Descriptor,
) -> Result<oci_spec::image::Descriptor> {
    for _ in 0..4 {
        if *desc.media_type() != MediaType::ImageIndex {
            break;
        }
        let d = Sha256::parse(desc.digest().as_ref(), "image index")?;
        let (b, _) = src.read_verified(
            &blob_name(&d),
            &format!("image index {d}"),
            Some(&d),
            Some(desc.size()),
        )?;
        let idx = ImageIndex::from_reader(&b[..]).map_err(|e| json_err("image index", e))?;
        desc = idx
            .manifests()
            .iter()
            .find(|m| {
                m.platform().as_ref().is_some_and(|p| {
                    p.os().to_string() == "linux" && p.architecture().to_string() == host_arch()
                })
            })
            .cloned()
            .ok_or_else(|| {
                StoreError::Unsupported(format!(
                    "image index {d} has no linux/{} manifest",
                    host_arch()
                ))
            })?;
    }
    Ok(desc)
}

/// The image a manifest descriptor points to: manifest and config read and verified, one
/// layer per manifest layer with its config diff_id.
fn oci_image(
    src: &Source,
    name: Option<String>,
    desc: &oci_spec::image::Descriptor,
) -> Result<ImageSpec> {
    let mdigest = Sha256::parse(desc.digest().as_ref(), "manifest")?;
    let what = format!("manifest {mdigest}");
    let (mbytes, _) = src.read_verified(
        &blob_name(&mdigest),
        &what,
        Some(&mdigest),
        Some(desc.size()),
    )?;
    let manifest = ImageManifest::from_reader(&mbytes[..]).map_err(|e| json_err(&what, e))?;
    let cdesc = manifest.config();
    let cdigest = Sha256::parse(cdesc.digest().as_ref(), "config")?;
    let cwhat = format!("config {cdigest}");
    let (cbytes, _) = src.read_verified(
        &blob_name(&cdigest),
        &cwhat,
        Some(&cdigest),
        Some(cdesc.size()),
    )?;
    let config = ImageConfiguration::from_reader(&cbytes[..]).map_err(|e| json_err(&cwhat, e))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(json_err(
            &what,
            format!(
                "{} layers but the config lists {} diff_ids",
                manifest.layers().len(),
                diff_ids.len()
            ),
        ));
    }
    let mut layers = Vec::new();
    for (l, diff) in manifest.layers().iter().zip(diff_ids) {
        let d = Sha256::parse(l.digest().as_ref(), "layer")?;
        let mt = l.media_type().to_string();
        if mt.contains("nondistributable") && !src.has(&blob_name(&d)) {
            return Err(StoreError::Unsupported(format!(
                "layer {d} is non-distributable and not in the source"
            )));
        }
        layers.push(LayerSpec {
            blob: blob_name(&d),
            digest: Some(d),
            size: Some(l.size()),
            media_type: Some(mt),
            diff_id: Sha256::parse(diff, "diff_id")?,
        });
    }
    Ok(ImageSpec {
        name,
        manifest_digest: Some(mdigest),
        config_digest: cdigest,
        layers,
        config: crate::config::ImageConfig::from_oci(&config),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The digest a docker save member name carries (`<hex>.json`, `blobs/sha256/<hex>`).
fn digest_in_name(name: &str) -> Option<Sha256> {
    let base = name.rsplit('/').next()?;
    let hex = base.strip_suffix(".json").unwrap_or(base);
    if name.starts_with("blobs/sha256/") || base.ends_with(".json") {
        Sha256::from_hex(hex)
    } else {
        None
    }
}

fn resolve_docker(src: &Source, want: Option<&str>) -> Result<ImageSpec> {
    let (bytes, _) = src.read_verified("manifest.json", "manifest.json", None, None)?;
    let ms: Vec<DockerManifest> =
        serde_json::from_slice(&bytes).map_err(|e| json_err("docker manifest.json", e))?;
    let tags = |m: &DockerManifest| m.repo_tags.clone().unwrap_or_default();
    let chosen = match want {
        Some(w)
            if ms
                .iter()
                .any(|m| tags(m).iter().any(|t| matches_name(t, w))) =>
        {
            ms.iter()
                .find(|m| tags(m).iter().any(|t| matches_name(t, w)))
        }
        _ if ms.len() == 1 => ms.first(),
        _ => None,
    };
    let Some(m) = chosen else {
        return Err(StoreError::BadSource {
            src: src.path().to_owned(),
            reason: format!(
                "manifest.json lists {} images; pick one with --name REPO:TAG",
                ms.len()
            ),
        });
    };
    let cwant = digest_in_name(&m.config);
    let (cbytes, cdigest) = src.read_verified(
        &m.config,
        &format!("config {}", m.config),
        cwant.as_ref(),
        None,
    )?;
    let config = ImageConfiguration::from_reader(&cbytes[..])
        .map_err(|e| json_err(&format!("config {}", m.config), e))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != m.layers.len() {
        return Err(json_err(
            "docker manifest.json",
            format!(
                "{} layers but the config lists {} diff_ids",
                m.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    let mut layers = Vec::new();
    for (l, diff) in m.layers.iter().zip(diff_ids) {
        layers.push(LayerSpec {
            blob: l.clone(),
            digest: digest_in_name(l),
            size: None,
            media_type: None,
            diff_id: Sha256::parse(diff, "diff_id")?,
        });
    }
    let name = match want {
        Some(w) => tags(m).into_iter().find(|t| matches_name(t, w)),
        None => tags(m).into_iter().next(),
    };
    Ok(ImageSpec {
        name,
        manifest_digest: None,
        config_digest: cdigest,
        layers,
        config: crate::config::ImageConfig::from_oci(&config),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_names() {
        assert_eq!(normalize("./a/b").as_deref(), Some("a/b"));
        assert_eq!(normalize("a/../b").as_deref(), Some("b"));
        assert_eq!(normalize("../b"), None);
        assert_eq!(normalize("/b"), None);
    }
}
