//! `strata completion SHELL`: the shell completion script, generated from the clap definitions
//! (so it never drifts from the real flags).
//!
//! ```sh
//! strata completion bash > /etc/bash_completion.d/strata
//! strata completion zsh  > "${fpath[1]}/_strata"
//! strata completion fish > ~/.config/fish/completions/strata.fish
//! ```

use clap::CommandFactory;
use clap_complete::Shell;

use crate::error::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

pub fn run(a: Args) -> Result {
    let mut cmd = crate::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "strata", &mut out);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &out)
        .map_err(|e| Error::failed(format!("cannot write the completion script: {e}")))
}
