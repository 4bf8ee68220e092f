//! `strata trace`: is this kernel exposed to the shrinker_rwsem mount stall, and (to come) who
//! holds the lock while a mount waits.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use strata_trace::check;

#[derive(clap::Args)]
pub struct TraceArgs {
    /// Only say whether memory reclaim holds the lock mounts take on this kernel: `rwsem`
    /// (exposed, Linux < 6.7) or `lockless` (6.7+ or a backport), from kallsyms and BTF.
    #[arg(long)]
    check: bool,
    /// Machine-readable output: one JSON object, to stdout or to FILE.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    json: Option<PathBuf>,
    /// Symbol listing to read instead of /proc/kallsyms (e.g. another kernel's System.map).
    #[arg(long, value_name = "FILE")]
    kallsyms: Option<PathBuf>,
    /// BTF to read instead of /sys/kernel/btf/vmlinux: raw BTF or a vmlinux ELF.
    #[arg(long, value_name = "FILE")]
    btf: Option<PathBuf>,
}

pub fn trace(a: TraceArgs) -> ExitCode {
    let c = check::check(a.kallsyms.as_deref(), a.btf.as_deref());
    if let Err(e) = output(&a, &c) {
        eprintln!("strata trace: {e}");
        return ExitCode::FAILURE;
    }
    if !a.check {
        eprintln!("strata trace: only --check is implemented in this build (tracing comes next)");
        return ExitCode::from(2);
    }
    match c.shrinker_lock {
        strata_trace::ShrinkerLock::Unknown => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

fn output(a: &TraceArgs, c: &strata_trace::KernelCheck) -> std::io::Result<()> {
    match a.json.as_deref() {
        None => std::io::stdout().write_all(check::render(c).as_bytes()),
        Some(p) => {
            // One line: the lab greps it out of a serial console.
            let json = serde_json::to_string(c).map_err(std::io::Error::other)? + "\n";
            if p.as_os_str() == "-" {
                std::io::stdout().write_all(json.as_bytes())
            } else {
                std::fs::write(p, json)
            }
        }
    }
}
