//! `strata image import|pull|ls|inspect|rm`: OCI images in the layer store.

use std::io::IsTerminal;
use std::time::Instant;

use clap::Subcommand;
use strata_store::{ImportOptions, Store, DEFAULT_MAX_UNPACKED};

use crate::args::{json_pretty, JsonArg, StoreArg};
use crate::error::{Error, Result};

#[derive(Subcommand)]
pub enum Cmd {
    /// Import an OCI image layout (directory), an OCI archive tar or a `docker save` tar.
    Import {
        /// The image: `oci:DIR[:REF]`, `oci-archive:FILE[:REF]`, `docker-archive:FILE[:REF]`
        /// (as skopeo spells them), a directory or tar path, or `-` for an archive on stdin.
        src: String,
        /// Name to record, normalised as docker does (`debian` is stored as
        /// `docker.io/library/debian:latest`); default: the name in the source, else its
        /// digest. Also picks the image when the source holds several, unless --ref is given.
        #[arg(long)]
        name: Option<String>,
        /// The image to take from a source that holds several (its name or tag).
        #[arg(long = "ref")]
        select: Option<String>,
        #[command(flatten)]
        import: ImportArgs,
    },
    /// Pull an image from a registry and import it: skopeo (which must be installed) copies it
    /// into a staging directory in the store, then it is imported as `image import` does.
    /// Always the linux/amd64 image (the guests are x86_64). Credentials: skopeo's own
    /// (`skopeo login`, `~/.docker/config.json`) or --authfile.
    Pull {
        /// The image, normalised as docker does (`debian` is
        /// `docker.io/library/debian:latest`); `NAME@sha256:…` pins a digest.
        reference: String,
        /// Name to record (normalised) instead of the reference.
        #[arg(long)]
        name: Option<String>,
        /// The registry speaks plain HTTP or has a certificate that cannot be checked (a
        /// registry of your own).
        #[arg(long)]
        insecure: bool,
        /// Registry credentials in this file (skopeo's --authfile).
        #[arg(long, value_name = "FILE")]
        authfile: Option<std::path::PathBuf>,
        #[command(flatten)]
        import: ImportArgs,
    },
    /// List images.
    Ls {
        #[command(flatten)]
        json: JsonArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show an image: its config (Entrypoint, Cmd, Env, User, WorkingDir, platform, labels) and
    /// its layers bottom-first with digest, diff_id and store path.
    Inspect {
        /// Image name or manifest/config digest.
        reference: String,
        #[command(flatten)]
        json: JsonArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Forget an image (its layers stay until `strata gc`).
    Rm {
        /// Image name or manifest/config digest.
        reference: String,
        #[command(flatten)]
        store: StoreArg,
    },
}

/// What `image import` and `image pull` share: how the layers are taken into the store.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// Limit on bytes unpacked by this import (decompression bombs).
    #[arg(long, default_value_t = DEFAULT_MAX_UNPACKED)]
    max_unpacked: u64,
    /// Also build the merged EROFS image of the layers now (`strata serve --erofs` would
    /// build it on first use): `mkfs.erofs`, needs erofs-utils.
    #[arg(long)]
    erofs: bool,
    #[command(flatten)]
    store: StoreArg,
}

impl Cmd {
    /// `image VERB`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Cmd::Import { .. } => "image import",
            Cmd::Pull { .. } => "image pull",
            Cmd::Ls { .. } => "image ls",
            Cmd::Inspect { .. } => "image inspect",
            Cmd::Rm { .. } => "image rm",
        }
    }
}

pub fn run(cmd: Cmd) -> Result {
    match cmd {
        Cmd::Import {
            src,
            name,
            select,
            import: a,
        } => import(&src, name, select, &a),
        Cmd::Pull {
            reference,
            name,
            insecure,
            authfile,
            import: a,
        } => pull(
            &reference,
            Pull {
                name,
                insecure,
                authfile,
            },
            &a,
        ),
        Cmd::Ls { json, store } => ls(json.json, &store),
        Cmd::Inspect {
            reference,
            json,
            store,
        } => inspect(&reference, json.json, &store),
        Cmd::Rm { reference, store } => {
            let i = Store::open(&store.store)?.remove_image(&reference)?;
            println!("removed {} (its layers stay until `strata gc`)", i.name);
            Ok(())
        }
    }
}

fn import(src: &str, name: Option<String>, select: Option<String>, a: &ImportArgs) -> Result {
    let (s, erofs) = (&a.store, a.erofs);
    let mut opts = ImportOptions {
        name,
        select,
        max_unpacked: a.max_unpacked,
        progress: std::io::stderr().is_terminal(),
        durable: true,
    };
    let t = Instant::now();
    let r = if src == "-" {
        Store::open(&s.store)?.import_stream(&mut std::io::stdin().lock(), &opts)?
    } else {
        let tr = strata_store::reference::transport(src).map_err(Error::refused)?;
        match (tr.kind, tr.path.is_dir()) {
            (Some("oci"), false) => {
                return Err(Error::refused(format!(
                    "oci:{} is not a directory (an OCI archive is oci-archive:FILE)",
                    tr.path.display()
                )))
            }
            (Some(k @ ("oci-archive" | "docker-archive")), true) => {
                return Err(Error::refused(format!(
                    "{k}:{} is a directory (an OCI layout directory is oci:DIR)",
                    tr.path.display()
                )))
            }
            _ => {}
        }
        match (&opts.select, tr.select) {
            (Some(a), Some(b)) if *a != b => {
                return Err(Error::refused(format!(
                    "--ref {a} and the reference {b} in {src} disagree: give one"
                )))
            }
            (None, Some(b)) => opts.select = Some(b),
            _ => {}
        }
        Store::open(&s.store)?.import(&tr.path, &opts)?
    };
    println!(
        "imported {} ({} layers: {} unpacked, {} already in the store; {} files, {:.1} MiB in {:.2} s)",
        r.image.name,
        r.image.layers.len(),
        r.unpacked,
        r.reused,
        r.files,
        r.bytes as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    if erofs {
        let e = Store::open(&s.store)?.image_erofs(&r.image.name)?;
        println!(
            "EROFS image {} ({:.1} MiB{})",
            e.path.display(),
            e.bytes as f64 / (1 << 20) as f64,
            if e.built {
                format!(", built in {:.2} s", e.build_secs)
            } else {
                ", already built".to_string()
            }
        );
    }
    Ok(())
}

/// How `image pull` reaches the registry.
struct Pull {
    name: Option<String>,
    insecure: bool,
    authfile: Option<std::path::PathBuf>,
}

/// The tag the staged OCI layout gives the pulled image.
const STAGED_TAG: &str = "pulled";

fn pull(reference: &str, p: Pull, a: &ImportArgs) -> Result {
    let normalized = strata_store::reference::normalize(reference).map_err(Error::refused)?;
    let store = Store::open(&a.store.store)?;
    let staging = store.staging("pull-")?;
    let layout = staging.path().join("layout");
    let mut cmd = std::process::Command::new("skopeo");
    // The guests are x86_64 Linux: from a multi-platform image, take that one.
    cmd.args(["--override-os", "linux", "--override-arch", "amd64", "copy"]);
    if !std::io::stderr().is_terminal() {
        cmd.arg("--quiet");
    }
    if p.insecure {
        cmd.arg("--src-tls-verify=false");
    }
    if let Some(a) = &p.authfile {
        cmd.arg("--authfile").arg(a);
    }
    cmd.arg(format!("docker://{normalized}"))
        .arg(format!("oci:{}:{STAGED_TAG}", layout.display()));
    // Its progress is not our result: on stderr, with its errors kept to classify them.
    if let Ok(fd) = std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned() {
        cmd.stdout(fd);
    }
    cmd.stderr(std::process::Stdio::piped());
    let out = cmd.output().map_err(|e| {
        Error::refused(format!(
            "image pull talks to registries through skopeo, which cannot be run ({e}): install \
             it (apt-get install skopeo, or scripts/install-deps.sh)"
        ))
    })?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        let said = said.trim();
        let kind = if ["manifest unknown", "name unknown", "not found"]
            .iter()
            .any(|w| said.contains(w))
        {
            crate::error::Kind::NotFound
        } else {
            crate::error::Kind::Failed
        };
        let hint = if said.contains("unauthorized") || said.contains("authentication required") {
            " (credentials: skopeo login REGISTRY, or --authfile)"
        } else if said.contains("http: server gave HTTP response to HTTPS client")
            || said.contains("certificate")
        {
            " (a registry without TLS, or with a certificate of its own: --insecure)"
        } else {
            ""
        };
        return Err(Error::new(
            kind,
            format!("cannot pull {normalized}{hint}: skopeo: {said}"),
        ));
    }
    import(
        &format!("oci:{}:{STAGED_TAG}", layout.display()),
        Some(p.name.unwrap_or(normalized)),
        None,
        a,
    )
}

fn ls(json: bool, s: &StoreArg) -> Result {
    // Listing creates nothing: a host without a store has no images.
    let images = match Store::find(&s.store)? {
        Some(store) => store.images()?,
        None => Vec::new(),
    };
    if json {
        println!("{}", json_pretty(&images)?);
        return Ok(());
    }
    // IMAGE ID is the config digest's first 12 hex digits, as docker shows it (`image
    // inspect`, `rootfs create --image` and `rm` accept any unique prefix of 4 or more).
    println!(
        "{:<48} {:<12}  {:>6}  MANIFEST",
        "NAME", "IMAGE ID", "LAYERS"
    );
    for i in images {
        let id = short(&i.config_digest);
        let m = i.manifest_digest.as_deref().map_or("-", short);
        println!("{:<48} {:<12}  {:>6}  {m}", i.name, id, i.layers.len());
    }
    Ok(())
}

/// The first 12 hex digits of a `sha256:` digest.
fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}

fn inspect(reference: &str, json: bool, s: &StoreArg) -> Result {
    let i = Store::find(&s.store)?
        .ok_or_else(|| strata_store::StoreError::ImageNotFound(reference.to_string()))?
        .image(reference)?;
    if json {
        println!("{}", json_pretty(&i)?);
        return Ok(());
    }
    println!("name: {}", i.name);
    if let Some(m) = &i.manifest_digest {
        println!("manifest: {m}");
    }
    println!("config: {}", i.config_digest);
    match &i.config {
        Some(c) => {
            for line in c.describe() {
                println!("  {line}");
            }
        }
        None => println!(
            "  (not kept: imported by an older strata; import it again to run its own \
             Entrypoint, Cmd, Env, User and WorkingDir)"
        ),
    }
    println!("layers (bottom first):");
    for l in &i.layers {
        println!(
            "  {}  diff_id {}  {}",
            l.digest,
            l.diff_id,
            l.path.display()
        );
    }
    Ok(())
}
