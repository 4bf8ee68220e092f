//! Arguments several commands share, declared once and flattened where they are used.

use std::path::PathBuf;

use clap::Args;

/// `--store DIR`: the layer store (image, rootfs, gc, serve --rootfs, daemon).
#[derive(Args, Debug, Clone)]
pub struct StoreArg {
    /// The store directory.
    #[arg(long, env = "STRATA_STORE", default_value = strata_store::DEFAULT_STORE)]
    pub store: PathBuf,
}

/// `--api SOCK`: the API socket of `strata daemon`.
#[derive(Args, Debug, Clone)]
pub struct ApiArg {
    /// The API socket of `strata daemon`.
    #[arg(long, default_value = strata_serve::api::DEFAULT_API_SOCKET)]
    pub api: PathBuf,
}

/// The per-session limits of `strata serve` and of each `strata daemon` session.
#[derive(Args, Debug, Clone)]
pub struct LimitsArgs {
    /// Most host inodes a guest may hold looked up at once (per session); past it, ENFILE.
    #[arg(long, default_value_t = strata_serve::Limits::DEFAULT.max_nodes)]
    pub max_nodes: usize,
    /// Most files and directories a guest may hold open at once (per session); past it, ENFILE.
    #[arg(long, default_value_t = strata_serve::Limits::DEFAULT.max_handles)]
    pub max_handles: usize,
    /// Refuse (EPERM) block and character device nodes the guest makes in its upper dir
    /// (allowed by default, as in Docker; the overlayfs whiteout char 0:0 always works).
    #[arg(long)]
    pub no_device_nodes: bool,
}

impl LimitsArgs {
    pub fn limits(&self) -> strata_serve::Limits {
        strata_serve::Limits {
            max_nodes: self.max_nodes,
            max_handles: self.max_handles,
            device_nodes: !self.no_device_nodes,
        }
    }
}

/// `--print-sandbox` of `strata serve` and `strata daemon`.
#[derive(Args, Debug, Clone)]
pub struct SandboxArgs {
    /// Print the sandbox that would be in force (capabilities, Landlock, seccomp), and exit.
    #[arg(long)]
    pub print_sandbox: bool,
}

impl SandboxArgs {
    /// With `--print-sandbox`: print it; whether the command is done.
    pub fn printed(&self) -> bool {
        if self.print_sandbox {
            println!("{}", strata_serve::sandbox::describe());
        }
        self.print_sandbox
    }
}

/// `--json`: the result as JSON on stdout instead of the human form.
#[derive(Args, Debug, Clone)]
pub struct JsonArg {
    /// Print the result as JSON on stdout instead of the human form.
    #[arg(long)]
    pub json: bool,
}

/// `--json` and `--output FILE`, for commands whose full result is large.
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Print the result as JSON on stdout instead of the human form.
    #[arg(long)]
    pub json: bool,
    /// Also write the full result as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

impl OutputArgs {
    /// Write `v` as (pretty) JSON to `--output`, if given.
    #[cfg(feature = "lab")]
    pub fn write(&self, v: &impl serde::Serialize) -> crate::error::Result {
        let Some(p) = &self.output else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(v).map_err(crate::error::Error::failed)?;
        std::fs::write(p, bytes).map_err(crate::error::Error::io("cannot write", p))
    }
}

/// A result written earlier with `--output` (for `--from-json FILE`).
#[cfg(feature = "lab")]
pub fn load_json<T: serde::de::DeserializeOwned>(p: &std::path::Path) -> crate::error::Result<T> {
    std::fs::read(p)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| crate::error::Error::failed(format!("cannot load {}: {e}", p.display())))
}

/// `v` as one line of JSON (scripts and the lab grep single lines out of consoles).
pub fn json_line(v: &impl serde::Serialize) -> crate::error::Result<String> {
    serde_json::to_string(v).map_err(crate::error::Error::failed)
}

/// `v` as pretty JSON.
pub fn json_pretty(v: &impl serde::Serialize) -> crate::error::Result<String> {
    serde_json::to_string_pretty(v).map_err(crate::error::Error::failed)
}

/// An octal socket mode (`--socket-mode`), at most 0777.
pub fn parse_mode(s: &str) -> std::result::Result<u32, String> {
    match u32::from_str_radix(s, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal mode (e.g. 600)")),
    }
}

/// A group by name (from the host's group database) or by number (`--socket-group`).
pub fn parse_group(s: &str) -> std::result::Result<u32, String> {
    if let Ok(gid) = s.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(s) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("no group named {s:?} on this host")),
        Err(e) => Err(format!("cannot look up group {s:?}: {e}")),
    }
}
