//! `strata image …`, `strata rootfs …`, `strata gc` and `strata serve --rootfs`: the CLI over
//! strata-store.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Subcommand};
use strata_store::{ImportOptions, Store, StoreError, DEFAULT_MAX_UNPACKED, DEFAULT_STORE};

#[derive(Args, Debug, Clone)]
pub struct StoreArg {
    /// The store directory.
    #[arg(long, default_value = DEFAULT_STORE)]
    pub store: PathBuf,
}

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Import an OCI image layout (directory), an OCI archive tar or a `docker save` tar.
    Import {
        /// The image: directory or tar file.
        src: PathBuf,
        /// Name to record (default: the name in the source, else its digest); picks the image
        /// when the source holds several.
        #[arg(long)]
        name: Option<String>,
        /// Limit on bytes unpacked by this import (decompression bombs).
        #[arg(long, default_value_t = DEFAULT_MAX_UNPACKED)]
        max_unpacked: u64,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List images.
    Ls {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show an image: layers bottom-first with digest, diff_id and store path.
    Inspect {
        /// Image name or manifest/config digest.
        reference: String,
        /// Print JSON (the image record).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Forget an image (its layers stay until `strata gc`).
    Rm {
        reference: String,
        #[command(flatten)]
        store: StoreArg,
    },
}

#[derive(Subcommand)]
pub enum RootfsCmd {
    /// Create a container's upper and work directories and its layer list from an image.
    Create {
        #[arg(long)]
        image: String,
        #[arg(long)]
        id: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Remove a container's rootfs (upper, work, record).
    Rm {
        id: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Ask `strata daemon` to serve rootfs ID on a new vhost-user socket (no process, no mount).
    Start {
        id: String,
        /// The vhost-user socket for the VMM (inside the daemon's socket directory).
        #[arg(long)]
        socket: PathBuf,
        /// Serve these layer dirs (topmost first) with --upper/--work instead of the store's
        /// rootfs ID (they must be inside a directory the daemon `--allow`s).
        #[arg(long = "lower", requires_all = ["upper", "work"])]
        lowers: Vec<PathBuf>,
        #[arg(long, requires = "lowers")]
        upper: Option<PathBuf>,
        #[arg(long, requires = "lowers")]
        work: Option<PathBuf>,
        /// Also serve the layers on this second socket, without xattrs (a second
        /// vhost-user-fs device; see `strata serve --lower-socket`).
        #[arg(long)]
        lower_socket: Option<PathBuf>,
        /// virtio-fs tag the VMM gives the --lower-socket device [default: strata-lower].
        #[arg(long, requires = "lower_socket")]
        lower_tag: Option<String>,
        #[command(flatten)]
        api: crate::daemon_cmd::ApiArg,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask `strata daemon` to stop serving ID (a connected guest gets EIO from then on).
    Stop {
        id: String,
        #[command(flatten)]
        api: crate::daemon_cmd::ApiArg,
        #[arg(long)]
        json: bool,
    },
    /// The sessions `strata daemon` serves (or one).
    Status {
        id: Option<String>,
        #[command(flatten)]
        api: crate::daemon_cmd::ApiArg,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct GcArgs {
    #[command(flatten)]
    store: StoreArg,
}

fn fail(what: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("strata {what}: {e}");
    ExitCode::FAILURE
}

fn open(s: &StoreArg) -> Result<Store, StoreError> {
    Store::open(&s.store)
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

pub fn image(cmd: ImageCmd) -> ExitCode {
    match cmd {
        ImageCmd::Import {
            src,
            name,
            max_unpacked,
            store,
        } => {
            let t = Instant::now();
            let opts = ImportOptions {
                name,
                max_unpacked,
                progress: std::io::stderr().is_terminal(),
                durable: true,
            };
            match open(&store).and_then(|s| s.import(&src, &opts)) {
                Ok(r) => {
                    let secs = t.elapsed().as_secs_f64();
                    println!(
                        "imported {} ({} layers: {} unpacked, {} already in the store; {} files, {:.1} MiB in {:.2} s)",
                        r.image.name,
                        r.image.layers.len(),
                        r.unpacked,
                        r.reused,
                        r.files,
                        r.bytes as f64 / (1 << 20) as f64,
                        secs
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail("image import", e),
            }
        }
        ImageCmd::Ls {
            json: as_json,
            store,
        } => match open(&store).and_then(|s| s.images()) {
            Ok(images) => {
                if as_json {
                    println!("{}", json(&images));
                } else {
                    println!("{:<40} {:>6}  DIGEST", "NAME", "LAYERS");
                    for i in images {
                        let d = i.manifest_digest.as_deref().unwrap_or(&i.config_digest);
                        println!("{:<40} {:>6}  {}", i.name, i.layers.len(), d);
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail("image ls", e),
        },
        ImageCmd::Inspect {
            reference,
            json: as_json,
            store,
        } => match open(&store).and_then(|s| s.image(&reference)) {
            Ok(i) => {
                if as_json {
                    println!("{}", json(&i));
                } else {
                    println!("name: {}", i.name);
                    if let Some(m) = &i.manifest_digest {
                        println!("manifest: {m}");
                    }
                    println!("config: {}", i.config_digest);
                    println!("layers (bottom first):");
                    for l in &i.layers {
                        println!(
                            "  {}  diff_id {}  {}",
                            l.digest,
                            l.diff_id,
                            l.path.display()
                        );
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail("image inspect", e),
        },
        ImageCmd::Rm { reference, store } => {
            match open(&store).and_then(|s| s.remove_image(&reference)) {
                Ok(i) => {
                    println!("removed {} (its layers stay until `strata gc`)", i.name);
                    ExitCode::SUCCESS
                }
                Err(e) => fail("image rm", e),
            }
        }
    }
}

pub fn rootfs(cmd: RootfsCmd) -> ExitCode {
    use strata_serve::api::Request;
    match cmd {
        RootfsCmd::Start {
            id,
            socket,
            lowers,
            upper,
            work,
            lower_socket,
            lower_tag,
            api,
            json,
        } => {
            // The daemon resolves relative paths against its own directory: send ours.
            let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
            let dirs = match (upper, work) {
                (Some(upper), Some(work)) if !lowers.is_empty() => Some(strata_serve::api::Dirs {
                    lowers: lowers.into_iter().map(abs).collect(),
                    upper: abs(upper),
                    work: abs(work),
                }),
                _ => None,
            };
            let req = Request::Start {
                id,
                socket: abs(socket),
                dirs,
                tag: None,
                layer_device: lower_socket.map(|s| strata_serve::api::LayerDevice {
                    socket: abs(s),
                    tag: lower_tag,
                }),
            };
            crate::daemon_cmd::call(api, req, json)
        }
        RootfsCmd::Stop { id, api, json } => {
            crate::daemon_cmd::call(api, Request::Stop { id }, json)
        }
        RootfsCmd::Status { id, api, json } => {
            crate::daemon_cmd::call(api, Request::Status { id }, json)
        }
        RootfsCmd::Create { image, id, store } => {
            match open(&store).and_then(|s| s.create_rootfs(&image, &id)) {
                Ok(r) => {
                    println!("{}", json(&r));
                    ExitCode::SUCCESS
                }
                Err(e) => fail("rootfs create", e),
            }
        }
        RootfsCmd::Rm { id, store } => match open(&store).and_then(|s| s.remove_rootfs(&id)) {
            Ok(()) => {
                println!("removed {id}");
                ExitCode::SUCCESS
            }
            Err(e) => fail("rootfs rm", e),
        },
    }
}

pub fn gc(a: GcArgs) -> ExitCode {
    match open(&a.store).and_then(|s| s.gc()) {
        Ok(r) => {
            for l in &r.layers_removed {
                println!("removed layer {l}");
            }
            println!(
                "gc: {} layers removed, {} stale temp entries removed",
                r.layers_removed.len(),
                r.tmp_removed
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail("gc", e),
    }
}

/// The lowers/upper/work of container `id`'s rootfs, as `strata serve` takes them by hand.
/// The store is only read (not created).
pub fn rootfs_dirs(
    store: Option<PathBuf>,
    id: &str,
) -> Result<(Vec<PathBuf>, PathBuf, PathBuf), StoreError> {
    let root = store.unwrap_or_else(|| PathBuf::from(DEFAULT_STORE));
    if !root.join("containers").is_dir() {
        return Err(StoreError::RootfsNotFound(format!(
            "{id} (no store at {})",
            root.display()
        )));
    }
    let r = Store::open_existing(root)?.rootfs(id)?;
    Ok((r.lowers, r.upper, r.work))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_resolves_to_the_dirs_given_by_hand() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path().join("store")).unwrap();
        // A one-layer OCI layout, made by hand.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "hello", &b"hi"[..]).unwrap();
        let layer = b.into_inner().unwrap();
        let l = d.path().join("layout");
        let blob = |bytes: &[u8]| {
            let dg = strata_store::digest::Sha256::of(bytes);
            std::fs::create_dir_all(l.join("blobs/sha256")).unwrap();
            std::fs::write(l.join("blobs/sha256").join(dg.hex()), bytes).unwrap();
            dg
        };
        let ld = blob(&layer);
        let cfg = serde_json::json!({"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[ld.to_string()]}});
        let cb = serde_json::to_vec(&cfg).unwrap();
        let cd = blob(&cb);
        let m = serde_json::json!({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":cd.to_string(),"size":cb.len()},
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":ld.to_string(),"size":layer.len()}]});
        let mb = serde_json::to_vec(&m).unwrap();
        let md = blob(&mb);
        let idx = serde_json::json!({"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":md.to_string(),"size":mb.len()}]});
        std::fs::write(l.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
        std::fs::write(l.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();

        let opts = ImportOptions {
            name: Some("hello".into()),
            ..Default::default()
        };
        store.import(&l, &opts).unwrap();
        let r = store.create_rootfs("hello", "c1").unwrap();
        let (lowers, upper, work) = rootfs_dirs(Some(store.root().to_owned()), "c1").unwrap();
        assert_eq!(lowers, r.lowers);
        assert_eq!(
            lowers,
            vec![store.root().join("layers/sha256").join(ld.hex())]
        );
        assert_eq!(upper, store.root().join("containers/c1/upper"));
        assert_eq!(work, store.root().join("containers/c1/work"));
        let by_hand = strata_serve::ServeConfig {
            lowers: lowers.clone(),
            upper: upper.clone(),
            work: work.clone(),
            socket: d.path().join("s"),
            tag: "strata".into(),
            limits: strata_serve::Limits::default(),
            lower_device: None,
        };
        let checked = by_hand.check().unwrap();
        assert_eq!(checked.lowers.len(), 1);
        assert!(std::fs::read(lowers[0].join("hello")).unwrap() == b"hi");
        assert!(matches!(
            rootfs_dirs(Some(store.root().to_owned()), "nope"),
            Err(StoreError::RootfsNotFound(_))
        ));
        store.remove_rootfs("c1").unwrap();
        assert!(!store.root().join("containers/c1").exists());
        // The image still holds the layer; after rm + gc it is gone.
        assert!(store.gc().unwrap().layers_removed.is_empty());
        store.remove_image("hello").unwrap();
        assert_eq!(store.gc().unwrap().layers_removed, vec![ld.to_string()]);
    }
}
