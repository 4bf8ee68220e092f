//! Test helpers: raw tars, OCI layouts, umoci, overlay mounts, tree comparison.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_store::digest::Sha256;

/// The test named `$test` builds images with umoci, as root (owners, devices, a host overlay
/// mount as the oracle): the harness's skip policy decides whether it runs.
#[macro_export]
macro_rules! need_umoci {
    ($test:expr) => {
        if !strata_harness::needs($test, true, &["umoci"]) {
            return;
        }
    };
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------- raw tar

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}\0", v, width = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

/// A ustar header written byte by byte (so any path, including hostile ones, fits).
pub fn header(path: &[u8], kind: u8, size: u64, link: &[u8], mode: u32) -> [u8; 512] {
    let mut h = [0u8; 512];
    assert!(path.len() <= 100 && link.len() <= 100);
    h[..path.len()].copy_from_slice(path);
    octal(&mut h[100..108], mode as u64);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_600_000_000);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| *b as u64).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

#[derive(Default, Clone)]
pub struct RawTar(pub Vec<u8>);

impl RawTar {
    pub fn entry(mut self, path: &str, kind: u8, data: &[u8], link: &str, mode: u32) -> Self {
        self.0.extend_from_slice(&header(
            path.as_bytes(),
            kind,
            data.len() as u64,
            link.as_bytes(),
            mode,
        ));
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    pub fn file(self, path: &str, data: &[u8]) -> Self {
        self.entry(path, b'0', data, "", 0o644)
    }
    pub fn dir(self, path: &str) -> Self {
        self.entry(path, b'5', b"", "", 0o755)
    }
    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.entry(path, b'2', b"", target, 0o777)
    }
    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.entry(path, b'1', b"", target, 0o644)
    }
    /// A PAX extended header applying to the next entry.
    pub fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let mut data = Vec::new();
        for (k, v) in records {
            let body_len = k.len() + v.len() + 3;
            let mut len = body_len + 1;
            while format!("{len}").len() + body_len != len {
                len += 1;
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        self.entry("pax", b'x', &data, "", 0o644)
    }
    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend(std::iter::repeat_n(0u8, 1024));
        self.0
    }
}

// ---------------------------------------------------------------- OCI layouts

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Comp {
    Plain,
    Gzip,
    Zstd,
}

pub fn compress(tar: &[u8], c: Comp) -> (Vec<u8>, &'static str) {
    match c {
        Comp::Plain => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            (
                e.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Comp::Zstd => (
            zstd::encode_all(tar, 3).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    }
}

pub fn write_blob(layout: &Path, bytes: &[u8]) -> Sha256 {
    let d = Sha256::of(bytes);
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(d.hex()), bytes).unwrap();
    d
}

pub fn blob_path(layout: &Path, d: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(d.trim_start_matches("sha256:"))
}

/// An OCI layout with these layer tars (bottom first); returns the layer blob digests.
pub fn oci_layout(layout: &Path, tars: &[Vec<u8>], comp: Comp, name: &str) -> Vec<Sha256> {
    fs::create_dir_all(layout).unwrap();
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let mut descs = Vec::new();
    let mut diffs = Vec::new();
    let mut digests = Vec::new();
    for t in tars {
        let (blob, mt) = compress(t, comp);
        let d = write_blob(layout, &blob);
        diffs.push(Sha256::of(t).to_string());
        descs.push(
            serde_json::json!({"mediaType": mt, "digest": d.to_string(), "size": blob.len()}),
        );
        digests.push(d);
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diffs},
    });
    let cbytes = serde_json::to_vec(&config).unwrap();
    let cd = write_blob(layout, &cbytes);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": cbytes.len()},
        "layers": descs,
    });
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let md = write_blob(layout, &mbytes);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.to_string(), "size": mbytes.len(),
                       "annotations": {"org.opencontainers.image.ref.name": name}}],
    });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    digests
}

/// Read an OCI layout's (single) manifest: (config json, [(layer media type, digest)]).
pub fn read_manifest(layout: &Path) -> (serde_json::Value, serde_json::Value) {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let md = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(blob_path(layout, &md)).unwrap()).unwrap();
    let cd = m["config"]["digest"].as_str().unwrap().to_string();
    let c: serde_json::Value =
        serde_json::from_slice(&fs::read(blob_path(layout, &cd)).unwrap()).unwrap();
    (c, m)
}

/// The uncompressed layer tars of a (gzip) OCI layout, bottom first.
pub fn layer_tars(layout: &Path) -> Vec<Vec<u8>> {
    let (_, m) = read_manifest(layout);
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let blob = fs::read(blob_path(layout, l["digest"].as_str().unwrap())).unwrap();
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&blob[..]), &mut out)
                .unwrap();
            out
        })
        .collect()
}

// ---------------------------------------------------------------- umoci

pub struct Umoci {
    pub layout: PathBuf,
    pub image: String,
    scratch: PathBuf,
    n: usize,
}

impl Umoci {
    pub fn init(layout: &Path, scratch: &Path, tag: &str) -> Umoci {
        run(Command::new("umoci").args(["init", "--layout"]).arg(layout));
        let image = format!("{}:{tag}", layout.display());
        run(Command::new("umoci").args(["new", "--image", &image]));
        Umoci {
            layout: layout.to_owned(),
            image,
            scratch: scratch.to_owned(),
            n: 0,
        }
    }

    /// An existing layout.
    pub fn open(layout: &Path, scratch: &Path, tag: &str) -> Umoci {
        Umoci {
            layout: layout.to_owned(),
            image: format!("{}:{tag}", layout.display()),
            scratch: scratch.join(format!(
                "scratch-{tag}-{}",
                layout.display().to_string().len()
            )),
            n: 0,
        }
    }

    /// Unpack, let `f` change the rootfs, repack: one new layer.
    pub fn layer(&mut self, f: impl FnOnce(&Path)) {
        self.n += 1;
        fs::create_dir_all(&self.scratch).unwrap();
        let b = self
            .scratch
            .join(format!("bundle{}-{}", self.n, self.image.len()));
        run(Command::new("umoci")
            .args(["unpack", "--image", &self.image])
            .arg(&b));
        f(&b.join("rootfs"));
        run(Command::new("umoci")
            .args(["repack", "--image", &self.image])
            .arg(&b));
        fs::remove_dir_all(&b).unwrap();
    }

    /// Append a hand-made (uncompressed) layer tar.
    pub fn raw_layer(&mut self, tar: &[u8]) {
        self.n += 1;
        let t = self.scratch.join(format!("raw{}.tar", self.n));
        fs::write(&t, tar).unwrap();
        run(Command::new("umoci")
            .args(["raw", "add-layer", "--image", &self.image])
            .arg(&t));
    }

    /// `umoci unpack` the image; returns the rootfs.
    pub fn unpack(&self, bundle: &Path) -> PathBuf {
        run(Command::new("umoci")
            .args(["unpack", "--image", &self.image])
            .arg(bundle));
        bundle.join("rootfs")
    }
}

// ---------------------------------------------------------------- overlay + compare

/// A read-only overlay of `lowers` (topmost first), unmounted on drop.
pub struct Overlay(pub PathBuf);

impl Overlay {
    pub fn mount(lowers: &[PathBuf], at: &Path) -> Overlay {
        fs::create_dir_all(at).unwrap();
        let l: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        let mut lowerdir = l.join(":");
        if lowers.len() == 1 {
            // A lower-only overlay needs two layers on older kernels: add an empty one.
            let empty = at.with_extension("empty");
            fs::create_dir_all(&empty).unwrap();
            lowerdir = format!("{lowerdir}:{}", empty.display());
        }
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            // nosuid,nodev: an image's setuid binaries and devices mean nothing on the host.
            .arg(format!("ro,nosuid,nodev,lowerdir={lowerdir}"))
            .arg(at));
        Overlay(at.to_owned())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub content: Option<Sha256>,
    pub link: Option<PathBuf>,
    pub rdev: u64,
}

pub fn scan(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        let p = root.join(rel);
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_file() {
            'f'
        } else if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else if ft.is_fifo() {
            'p'
        } else {
            's'
        };
        out.insert(
            rel.to_owned(),
            Node {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: if kind == 'f' || kind == 'l' {
                    m.size()
                } else {
                    0
                },
                content: (kind == 'f').then(|| Sha256::of(&fs::read(&p).unwrap())),
                link: (kind == 'l').then(|| fs::read_link(&p).unwrap()),
                rdev: m.rdev(),
            },
        );
        if kind == 'd' {
            let mut names: Vec<_> = fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                walk(root, &rel.join(n), out);
            }
        }
    }
    walk(root, Path::new(""), &mut out);
    out
}

/// Assert two trees are equal (paths, types, modes, owners, sizes, contents, link targets).
pub fn assert_same_tree(got: &Path, want: &Path) {
    let a = scan(got);
    let b = scan(want);
    let mut diffs = Vec::new();
    for (p, n) in &b {
        match a.get(p) {
            None => diffs.push(format!("missing {p:?}: {n:?}")),
            Some(m) if m != n => diffs.push(format!("differs {p:?}:\n  got  {m:?}\n  want {n:?}")),
            _ => {}
        }
    }
    for p in a.keys() {
        if !b.contains_key(p) {
            diffs.push(format!("extra {p:?}: {:?}", a[p]));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    assert!(b.len() > 1);
}

/// Every path under `root` with its type and size: to check a store did not change.
pub fn listing(root: &Path) -> Vec<String> {
    scan(root)
        .into_iter()
        .map(|(p, n)| format!("{} {} {}", p.display(), n.kind, n.size))
        .collect()
}
