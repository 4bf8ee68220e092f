//! `strata image import|ls|inspect|rm`: OCI images in the layer store.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use clap::Subcommand;
use strata_store::{ImportOptions, Store, DEFAULT_MAX_UNPACKED};

use crate::args::{json_pretty, JsonArg, StoreArg};
use crate::error::Result;

#[derive(Subcommand)]
pub enum Cmd {
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
        #[command(flatten)]
        json: JsonArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show an image: layers bottom-first with digest, diff_id and store path.
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

impl Cmd {
    /// `image VERB`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Cmd::Import { .. } => "image import",
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
            max_unpacked,
            store,
        } => import(&src, name, max_unpacked, &store),
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

fn import(src: &std::path::Path, name: Option<String>, max_unpacked: u64, s: &StoreArg) -> Result {
    let t = Instant::now();
    let opts = ImportOptions {
        name,
        max_unpacked,
        progress: std::io::stderr().is_terminal(),
        durable: true,
    };
    let r = Store::open(&s.store)?.import(src, &opts)?;
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
    Ok(())
}

fn ls(json: bool, s: &StoreArg) -> Result {
    let images = Store::open(&s.store)?.images()?;
    if json {
        println!("{}", json_pretty(&images)?);
        return Ok(());
    }
    println!("{:<40} {:>6}  DIGEST", "NAME", "LAYERS");
    for i in images {
        let d = i.manifest_digest.as_deref().unwrap_or(&i.config_digest);
        println!("{:<40} {:>6}  {}", i.name, i.layers.len(), d);
    }
    Ok(())
}

fn inspect(reference: &str, json: bool, s: &StoreArg) -> Result {
    let i = Store::open(&s.store)?.image(reference)?;
    if json {
        println!("{}", json_pretty(&i)?);
        return Ok(());
    }
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
    Ok(())
}
