//! `containerd-shim-strata-v2`: containerd's runtime `io.containerd.strata.v2` (task API v2).
//!
//! containerd runs `containerd-shim-strata-v2 … start` in the bundle directory; that process
//! spawns the long-running shim (one per container) and prints its ttrpc address. The shim
//! serves the Task service ([`task`]): each container is a strata micro-VM ([`sandbox`]) whose
//! root filesystem is the snapshotter's directories served over virtio-fs ([`rootfs`]), with no
//! host mount. `… delete` cleans up after a shim that died, from the state the task left in
//! its bundle ([`state`]).

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod error;
mod rootfs;
mod sandbox;
mod state;
mod task;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use containerd_shim::{
    self as shim, api, publisher::RemotePublisher, util::write_address, Config, ExitSignal, Flags,
    StartOpts,
};

/// The runtime name containerd knows this shim by.
pub const RUNTIME_NAME: &str = "io.containerd.strata.v2";

struct StrataShim {
    id: String,
    namespace: String,
    bundle: String,
    exit: Arc<ExitSignal>,
    tasks: Arc<OnceLock<task::TaskService>>,
}

impl shim::Shim for StrataShim {
    type T = task::TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        StrataShim {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            bundle: args.bundle.clone(),
            exit: Arc::new(ExitSignal::default()),
            tasks: Arc::new(OnceLock::new()),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, shim::Error> {
        // One shim per container: the container id is the grouping.
        let grouping = opts.id.clone();
        let (_pid, address) = shim::spawn(opts, &grouping, Vec::new())?;
        write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> Result<api::DeleteResponse, shim::Error> {
        // containerd runs this in the bundle directory after the shim died.
        let bundle = if self.bundle.is_empty() {
            std::env::current_dir().map_err(|e| shim::Error::Other(e.to_string()))?
        } else {
            Path::new(&self.bundle).to_path_buf()
        };
        let mut resp = api::DeleteResponse {
            exit_status: state::KILLED_STATUS,
            exited_at: containerd_shim_protos::protobuf::MessageField::some(
                containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp::now(),
            ),
            ..Default::default()
        };
        remove_dead_socket(&bundle);
        match state::BundleState::load(&bundle)? {
            Some(s) => {
                resp.pid = s.vmm_pid;
                s.cleanup(&bundle);
            }
            None => log::info!(
                "delete {}: no strata state in {}",
                self.id,
                bundle.display()
            ),
        }
        Ok(resp)
    }

    fn wait(&mut self) {
        self.exit.wait();
        if let Some(t) = self.tasks.get() {
            t.destroy_all();
        }
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let t = task::TaskService::new(
            &self.namespace,
            Box::new(sandbox::StrataBackend::new()),
            self.exit.clone(),
            Some(publisher),
        );
        let _ = self.tasks.set(t.clone());
        t
    }
}

/// The ttrpc socket of a shim that died (its `address` file in the bundle): removed when
/// nothing answers on it any more, else it stays in /run/containerd/s for good.
fn remove_dead_socket(bundle: &Path) {
    let Ok(addr) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let addr = addr.trim();
    let path = Path::new(addr.strip_prefix("unix://").unwrap_or(addr));
    let is_socket = std::fs::symlink_metadata(path)
        .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        .unwrap_or(false);
    if is_socket && std::os::unix::net::UnixStream::connect(path).is_err() {
        state::remove_path(path);
    }
}

fn main() {
    let config = Config {
        // The sandbox waits for its own VMM; the library's SIGCHLD reaper would take its
        // status away.
        no_reaper: true,
        ..Default::default()
    };
    shim::run::<StrataShim>(RUNTIME_NAME, Some(config));
}
