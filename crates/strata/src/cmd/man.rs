//! `strata man --dir DIR`: man pages generated from the clap definitions: `strata.1` and one page
//! per verb (`strata-image-import.1`, …), so `man strata-serve` documents exactly the flags the
//! binary takes.
//!
//! ```sh
//! strata man --dir /usr/local/share/man/man1 && mandb -q
//! ```

use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::error::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Directory to write the pages into (created if missing).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

pub fn run(a: Args) -> Result {
    std::fs::create_dir_all(&a.dir).map_err(Error::io("cannot create", &a.dir))?;
    let mut cmd = crate::Cli::command();
    cmd.build();
    let mut written = 0;
    render(&cmd, "strata", &a.dir, &mut written)?;
    println!("wrote {written} man pages to {}", a.dir.display());
    Ok(())
}

/// Write the page of `cmd` (named `name`) and those of its visible subcommands.
fn render(cmd: &clap::Command, name: &str, dir: &Path, written: &mut usize) -> Result {
    let page = clap_mangen::Man::new(cmd.clone().name(name.to_owned()));
    let mut out = Vec::new();
    page.render(&mut out)
        .map_err(|e| Error::failed(format!("cannot render the man page of {name}: {e}")))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, out).map_err(Error::io("cannot write", &path))?;
    *written += 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        render(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
