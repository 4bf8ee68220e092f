//! `strata rootfs`: a container's rootfs in the store (`create`, `rm`) and its session in
//! `strata daemon` (`start`, `stop`, `status`, over the daemon's API).

use std::path::{Path, PathBuf};

use clap::Subcommand;
use strata_serve::api::{Client, Dirs, LayerDevice, Request, Response, SessionInfo};
use strata_store::{Store, StoreError};

use crate::args::{json_pretty, ApiArg, JsonArg, StoreArg};
use crate::error::{Error, Kind, Result};

#[derive(Subcommand)]
pub enum Cmd {
    /// Create a container's upper and work directories and its layer list from an image.
    Create {
        /// The image (name or digest).
        #[arg(long)]
        image: String,
        /// The rootfs ID.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        json: JsonArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Remove a container's rootfs (upper, work, record); refused while it is served.
    Rm {
        id: String,
        /// Remove it even while a server or daemon session serves it (its guest is left on
        /// deleted directories).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// The container rootfs in the store: image, upper size, and who serves it.
    Ls {
        #[command(flatten)]
        json: JsonArg,
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
        /// The guest reads the layers from the store rootfs's merged EROFS image (built here
        /// on first use) on a read-only virtio-blk device the VMM attaches; the daemon serves
        /// the upper. The qemu arguments for the device are printed on stderr.
        #[arg(long, conflicts_with_all = ["lowers", "lower_socket"])]
        erofs: bool,
        /// virtio-blk serial number of the --erofs device (qemu `serial=`).
        #[arg(long, default_value = strata_plan::DEFAULT_LOWER_SERIAL, requires = "erofs")]
        erofs_serial: String,
        /// With --lower: the VMM attaches these layers' merged EROFS image read-only as the
        /// virtio-blk device with this serial number (as `strata serve --lower-block`).
        #[arg(long, value_name = "SERIAL", requires = "lowers", conflicts_with_all = ["erofs", "lower_socket"])]
        lower_block: Option<String>,
        /// The daemon merges the upper and the layers itself and serves them as `rootfs/`
        /// (as `strata serve --union`): the guest mounts no overlay.
        #[arg(long, conflicts_with_all = ["erofs", "lower_block", "lower_socket"])]
        union: bool,
        #[command(flatten)]
        store: StoreArg,
        #[command(flatten)]
        api: ApiArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Ask `strata daemon` to stop serving ID (a connected guest gets EIO from then on).
    Stop {
        id: String,
        #[command(flatten)]
        api: ApiArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// The sessions `strata daemon` serves (or one).
    Status {
        id: Option<String>,
        #[command(flatten)]
        api: ApiArg,
        #[command(flatten)]
        json: JsonArg,
    },
}

impl Cmd {
    /// `rootfs VERB`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Cmd::Create { .. } => "rootfs create",
            Cmd::Rm { .. } => "rootfs rm",
            Cmd::Ls { .. } => "rootfs ls",
            Cmd::Start { .. } => "rootfs start",
            Cmd::Stop { .. } => "rootfs stop",
            Cmd::Status { .. } => "rootfs status",
        }
    }
}

pub fn run(cmd: Cmd) -> Result {
    match cmd {
        Cmd::Create {
            image,
            id,
            json,
            store,
        } => {
            let r = Store::open(&store.store)?.create_rootfs(&image, &id)?;
            if json.json {
                println!("{}", json_pretty(&r)?);
            } else {
                println!("created rootfs {id}: upper {}", r.upper.display());
            }
            Ok(())
        }
        Cmd::Rm { id, force, store } => {
            Store::open(&store.store)?.remove_rootfs(&id, force)?;
            println!("removed {id}");
            Ok(())
        }
        Cmd::Ls { json, store } => list(&store.store, json.json),
        Cmd::Start {
            id,
            socket,
            lowers,
            upper,
            work,
            lower_socket,
            lower_tag,
            erofs,
            erofs_serial,
            lower_block,
            union,
            store,
            api,
            json,
        } => {
            let lower_block = match (erofs, lower_block) {
                (true, _) => Some(super::serve::erofs_device(
                    &store.store,
                    &id,
                    &erofs_serial,
                )?),
                (false, Some(serial)) => {
                    super::serve::check_serial(&serial)?;
                    Some(strata_plan::LowerBlock::erofs(&serial))
                }
                (false, None) => None,
            };
            // The daemon resolves relative paths against its own directory: send ours.
            let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
            let dirs = match (upper, work) {
                (Some(upper), Some(work)) if !lowers.is_empty() => Some(Dirs {
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
                layer_device: lower_socket.map(|s| LayerDevice {
                    socket: abs(s),
                    tag: lower_tag,
                }),
                lower_block,
                union,
            };
            call(&api, &req, json.json)
        }
        Cmd::Stop { id, api, json } => call(&api, &Request::Stop { id }, json.json),
        Cmd::Status { id, api, json } => call(&api, &Request::Status { id }, json.json),
    }
}

/// The lowers/upper/work of container `id`'s rootfs in the store at `root`, as `strata serve`
/// takes them by hand. The store is only read (not created).
pub fn dirs(root: &Path, id: &str) -> Result<(Vec<PathBuf>, PathBuf, PathBuf)> {
    if !root.join("containers").is_dir() {
        return Err(
            StoreError::RootfsNotFound(format!("{id} (no store at {})", root.display())).into(),
        );
    }
    let r = Store::open_existing(root)?.rootfs(id)?;
    Ok((r.lowers, r.upper, r.work))
}

fn line(s: &SessionInfo) -> String {
    format!(
        "{:<20} {:<10} layers={} requests={} nodes={} handles={} age={}ms startup={}us {}",
        s.id,
        format!("{:?}", s.state).to_lowercase(),
        s.layers,
        s.requests,
        s.nodes,
        s.handles,
        s.age_ms,
        s.startup_us,
        s.socket.display()
    ) + &s
        .layer_device
        .as_ref()
        .map(|p| format!(" layers-on={}", p.display()))
        .unwrap_or_default()
}

/// Send one request to `strata daemon` and print the answer (`--json`: as the daemon sent it,
/// on stdout, errors included). A refusal is an error of the kind the daemon said.
fn call(api: &ApiArg, req: &Request, json: bool) -> Result {
    let resp = Client::connect(&api.api)
        .and_then(|mut c| c.call(req))
        .map_err(|e| Error::failed(format!("{}: {e}", api.api.display())))?;
    if json {
        println!("{}", json_pretty(&resp)?);
    }
    match resp {
        Response::Error { kind, message } => Err(Error::new(Kind::from(kind), message)),
        _ if json => Ok(()),
        Response::Started { session } | Response::Stopped { session } => {
            println!("{}", line(&session));
            Ok(())
        }
        Response::Status { sessions } => {
            for s in &sessions {
                println!("{}", line(s));
            }
            if sessions.is_empty() {
                println!("no sessions");
            }
            Ok(())
        }
    }
}

/// One line of `rootfs ls`.
#[derive(serde::Serialize)]
struct Listed {
    id: String,
    image: String,
    /// Bytes of regular files in the upper (what the container wrote).
    upper_bytes: u64,
    /// `idle`, or `served` (by `pid`).
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
}

fn list(store: &Path, json: bool) -> Result {
    let mut out = Vec::new();
    // A host without a store has no rootfs; listing creates nothing.
    let records = match Store::find(store)? {
        Some(s) => Some((s.rootfs_list()?, s)),
        None => None,
    };
    for (r, store) in records
        .iter()
        .flat_map(|(list, s)| list.iter().cloned().map(move |r| (r, s)))
    {
        let pid = store.rootfs_holder(&r.id)?;
        out.push(Listed {
            upper_bytes: tree_bytes(&r.upper),
            state: if pid.is_some() { "served" } else { "idle" },
            id: r.id,
            image: r.image,
            pid,
        });
    }
    if json {
        println!("{}", json_pretty(&out)?);
        return Ok(());
    }
    println!("{:<24} {:<32} {:>12}  STATE", "ID", "IMAGE", "UPPER");
    for l in &out {
        let state = match l.pid {
            Some(pid) => format!("served by pid {pid}"),
            None => "idle".to_string(),
        };
        println!(
            "{:<24} {:<32} {:>12}  {state}",
            l.id, l.image, l.upper_bytes
        );
    }
    Ok(())
}

/// Total size of the regular files under `dir` (not following symlinks; unreadable parts
/// count as 0: this is a listing, not an audit).
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => todo.push(e.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_store::ImportOptions;

    #[test]
    fn rootfs_resolves_to_the_dirs_given_by_hand() {
        if !strata_harness::needs("rootfs_resolves_to_the_dirs_given_by_hand", true, &[]) {
            return;
        }
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
        let (lowers, upper, work) = dirs(store.root(), "c1").unwrap();
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
            socket_fd: None,
            socket_perms: Default::default(),
            tag: "strata".into(),
            limits: strata_serve::Limits::default(),
            lower_device: None,
            lower_block: None,
            union: false,
        };
        let checked = by_hand.check().unwrap();
        assert_eq!(checked.lowers.len(), 1);
        assert!(std::fs::read(lowers[0].join("hello")).unwrap() == b"hi");
        let e = dirs(store.root(), "nope").unwrap_err();
        assert_eq!(e.kind, crate::error::Kind::NotFound, "{e}");
        store.remove_rootfs("c1", false).unwrap();
        assert!(!store.root().join("containers/c1").exists());
        // The image still holds the layer; after rm + gc it is gone.
        assert!(store.gc().unwrap().layers_removed.is_empty());
        store.remove_image("hello").unwrap();
        assert_eq!(store.gc().unwrap().layers_removed, vec![ld.to_string()]);
    }
}
