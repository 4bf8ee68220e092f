//! Import throughput against `umoci unpack` of the same image, in one run.
//!
//! ```sh
//! cargo run --release -p strata-store --example import_bench -- [DIR] [RUNS]
//! ```
//!
//! Builds (once, in DIR, default /var/tmp/strata-import-bench) a three-layer OCI image with
//! umoci: a busybox rootfs, /usr/lib/python3.11 and /usr/share/doc of this machine (a few
//! thousand files, gzip layers). Then, RUNS times (default 3), imports it into a fresh store
//! (durable: with the syncfs before layers become visible; and without it), and
//! `umoci unpack`s it into a fresh bundle (umoci does not sync), each after a `sync`, and
//! prints the median of each; also of importing the same image again into the filled store
//! (every layer reused after its seal is checked).
//! Needs root (device nodes, ownership, trusted xattrs), umoci and busybox.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use strata_store::{ImportOptions, Store};

fn sh(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn build(dir: &Path) -> Result<PathBuf, String> {
    let layout = dir.join("layout");
    if layout.join("index.json").is_file() {
        return Ok(layout);
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let image = format!("{}:bench", layout.display());
    sh(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout))?;
    sh(Command::new("umoci").args(["new", "--image", &image]))?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .ok_or("busybox not found (apt-get install busybox-static)")?;
    let steps: [(&str, String); 3] = [
        (
            "busybox",
            format!(
                "mkdir -p bin sbin etc tmp root proc sys dev && cp {busybox} bin/busybox && \
                 for a in $(bin/busybox --list); do [ -e bin/$a ] || ln -s busybox bin/$a; done && \
                 ln -sf ../bin/busybox sbin/init && echo root:x:0:0::/root:/bin/sh > etc/passwd"
            ),
        ),
        (
            "python",
            "mkdir -p usr/lib && cp -a /usr/lib/python3.11 usr/lib/".to_string(),
        ),
        (
            "doc",
            "mkdir -p usr/share && cp -a /usr/share/doc usr/share/".to_string(),
        ),
    ];
    for (name, script) in steps {
        let b = dir.join(format!("bundle-{name}"));
        sh(Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&b))?;
        sh(Command::new("sh")
            .args(["-c", &script])
            .current_dir(b.join("rootfs")))?;
        sh(Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&b))?;
        std::fs::remove_dir_all(&b).map_err(|e| e.to_string())?;
    }
    Ok(layout)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "/var/tmp/strata-import-bench".into()),
    );
    let runs: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(3);
    let layout = build(&dir)?;
    let image = format!("{}:bench", layout.display());
    let blob_bytes: u64 = std::fs::read_dir(layout.join("blobs/sha256"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();

    let mut strata = Vec::new();
    let mut fast = Vec::new();
    let mut reimport = Vec::new();
    let mut umoci = Vec::new();
    let mut report = None;
    for i in 0..runs {
        let store = dir.join(format!("store-{i}"));
        let bundle = dir.join(format!("unpacked-{i}"));
        let _ = std::fs::remove_dir_all(&store);
        let _ = std::fs::remove_dir_all(&bundle);
        sh(&mut Command::new("sync"))?;

        let t = Instant::now();
        let s = Store::open(&store).map_err(|e| e.to_string())?;
        let r = s
            .import(&layout, &ImportOptions::default())
            .map_err(|e| e.to_string())?;
        strata.push(t.elapsed());
        // The same image again: every layer reused once its seal is checked (a stat walk).
        let t = Instant::now();
        let again = s
            .import(&layout, &ImportOptions::default())
            .map_err(|e| e.to_string())?;
        reimport.push(t.elapsed());
        if again.unpacked != 0 {
            return Err(format!("re-import unpacked {} layers", again.unpacked));
        }
        std::fs::remove_dir_all(&store).map_err(|e| e.to_string())?;
        sh(&mut Command::new("sync"))?;

        let t = Instant::now();
        let s = Store::open(&store).map_err(|e| e.to_string())?;
        let opts = ImportOptions {
            durable: false,
            ..Default::default()
        };
        s.import(&layout, &opts).map_err(|e| e.to_string())?;
        fast.push(t.elapsed());
        std::fs::remove_dir_all(&store).map_err(|e| e.to_string())?;
        sh(&mut Command::new("sync"))?;

        let t = Instant::now();
        sh(Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle))?;
        umoci.push(t.elapsed());

        report = Some(r);
        std::fs::remove_dir_all(&bundle).map_err(|e| e.to_string())?;
    }
    let r = report.ok_or("RUNS must be at least 1")?;
    let (s, f, u) = (
        median(strata.clone()),
        median(fast.clone()),
        median(umoci.clone()),
    );
    let mib = r.bytes as f64 / (1 << 20) as f64;
    println!(
        "image: {} layers, {} entries (non-directories), {:.1} MiB uncompressed tar, {:.1} MiB blobs",
        r.image.layers.len(),
        r.files,
        mib,
        blob_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "runs: {runs} (median; all: strata {strata:.2?}, strata without syncfs {fast:.2?}, umoci {umoci:.2?})"
    );
    for (name, d) in [
        ("strata image import", s),
        ("  without syncfs", f),
        ("  again (reused)", median(reimport.clone())),
        ("umoci unpack", u),
    ] {
        let secs = d.as_secs_f64();
        println!(
            "{name:<20} {secs:>7.3} s  {:>7.1} MiB/s  {:>8.0} entries/s",
            mib / secs,
            r.files as f64 / secs
        );
    }
    println!(
        "umoci / strata: {:.2}x (durable), {:.2}x (without syncfs; umoci does not sync)",
        u.as_secs_f64() / s.as_secs_f64(),
        u.as_secs_f64() / f.as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("import_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
