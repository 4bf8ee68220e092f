//! `strata daemon` (many VMs in one process) and its clients `strata rootfs start|stop|status`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use strata_serve::api::{self, Client, Dirs, ErrorKind, Request, Response, SessionInfo};
use strata_serve::supervisor::{self, DaemonConfig};

use crate::image_cmd;

#[derive(Args)]
pub struct DaemonArgs {
    /// The API socket (`strata rootfs start|stop|status --api`).
    #[arg(long, default_value = api::DEFAULT_API_SOCKET)]
    api: PathBuf,
    /// Session sockets must be inside this directory (default: the API socket's directory).
    #[arg(long)]
    socket_dir: Option<PathBuf>,
    /// The store whose rootfs IDs `start` serves (default /var/lib/strata).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Also serve explicit layer/upper/work dirs from inside DIR (repeatable; for benchmarks
    /// and runtimes with their own layer store).
    #[arg(long = "allow")]
    allow: Vec<PathBuf>,
    /// Per session: most host inodes its guest may hold looked up at once; past it, ENFILE.
    #[arg(long, default_value_t = strata_serve::Limits::DEFAULT.max_nodes)]
    max_nodes: usize,
    /// Per session: most files and directories its guest may hold open at once; past it, ENFILE.
    #[arg(long, default_value_t = strata_serve::Limits::DEFAULT.max_handles)]
    max_handles: usize,
    /// Print the sandbox that would be in force, and exit.
    #[arg(long)]
    print_sandbox: bool,
}

pub fn daemon(a: DaemonArgs) -> ExitCode {
    if a.print_sandbox {
        println!("{}", strata_serve::sandbox::describe());
        return ExitCode::SUCCESS;
    }
    let store = a
        .store
        .clone()
        .unwrap_or_else(|| PathBuf::from(strata_store::DEFAULT_STORE));
    let socket_dir = a.socket_dir.clone().unwrap_or_else(|| {
        a.api
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| p.to_owned())
            .unwrap_or_else(|| PathBuf::from("."))
    });
    let resolver_store = store.clone();
    let resolver: supervisor::Resolver =
        Box::new(
            move |id: &str| match image_cmd::rootfs_dirs(Some(resolver_store.clone()), id) {
                Ok((lowers, upper, work)) => Ok(Dirs {
                    lowers,
                    upper,
                    work,
                }),
                Err(strata_store::StoreError::RootfsNotFound(m)) => Err((
                    ErrorKind::NotFound,
                    format!("rootfs {m} not found: create it with `strata rootfs create`"),
                )),
                Err(e) => Err((ErrorKind::Failed, e.to_string())),
            },
        );
    let cfg = DaemonConfig {
        api: a.api,
        socket_dir,
        allow: a.allow,
        read_only: vec![store.clone()],
        read_write: vec![store.join("containers")],
        cache: strata_serve::CachePolicy::default(),
        limits: strata_serve::Limits {
            max_nodes: a.max_nodes,
            max_handles: a.max_handles,
        },
        confine: true,
    };
    match supervisor::run(cfg, resolver) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata daemon: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

#[derive(Args)]
pub struct ApiArg {
    /// The daemon's API socket.
    #[arg(long, default_value = api::DEFAULT_API_SOCKET)]
    api: PathBuf,
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

/// Send one request and print the answer (`--json`: as the daemon sent it).
pub fn call(api_arg: ApiArg, req: Request, json: bool) -> ExitCode {
    let what = match &req {
        Request::Start { .. } => "rootfs start",
        Request::Stop { .. } => "rootfs stop",
        Request::Status { .. } => "rootfs status",
    };
    let resp = match Client::connect(&api_arg.api).and_then(|mut c| c.call(&req)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strata {what}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&resp).unwrap_or_default()
        );
    }
    match resp {
        Response::Error { kind, message } => {
            eprintln!("strata {what}: {message}");
            ExitCode::from(match kind {
                ErrorKind::BadRequest | ErrorKind::Config => 2,
                ErrorKind::NotFound | ErrorKind::Exists => 3,
                ErrorKind::Failed => 1,
            })
        }
        _ if json => ExitCode::SUCCESS,
        Response::Started { session } | Response::Stopped { session } => {
            println!("{}", line(&session));
            ExitCode::SUCCESS
        }
        Response::Status { sessions } => {
            for s in &sessions {
                println!("{}", line(s));
            }
            if sessions.is_empty() {
                println!("no sessions");
            }
            ExitCode::SUCCESS
        }
    }
}
