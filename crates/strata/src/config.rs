//! The host configuration file: defaults for command-line flags, so an operator sets the store,
//! the daemon's sockets, allow-list and limits once instead of on every command.
//!
//! `$STRATA_CONFIG`, else `/etc/strata/config.toml` if it exists. Top-level keys apply to every
//! command that has the flag (`store`, `log-format`); a table named after a command (`[daemon]`,
//! `[serve]`, `["rootfs start"]`) sets that command's flags by their long name (`max-nodes` or
//! `max_nodes`). A flag on the command line wins over its environment variable, which wins over
//! the file, which wins over the built-in default. Unknown keys are refused: a typo must not be
//! silently ignored in a file that decides what a daemon serves.
//!
//! ```toml
//! store = "/var/lib/strata"
//! log-format = "json"
//!
//! [daemon]
//! api = "/run/strata/api.sock"
//! allow = ["/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs"]
//! max-nodes = 65536
//! ```

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where the configuration is read from, when there is one.
pub fn path() -> Option<PathBuf> {
    match std::env::var_os("STRATA_CONFIG") {
        Some(p) if p.is_empty() => None,
        Some(p) => Some(PathBuf::from(p)),
        None => Some(PathBuf::from("/etc/strata/config.toml")).filter(|p| p.exists()),
    }
}

/// `cmd` with the defaults of the configuration file (if any) applied.
pub fn apply_file(cmd: clap::Command) -> Result<clap::Command> {
    let Some(p) = path() else {
        return Ok(cmd);
    };
    let text = std::fs::read_to_string(&p).map_err(|e| {
        Error::refused(format!(
            "cannot read the configuration {}: {e}",
            p.display()
        ))
    })?;
    apply(cmd, &text, &p)
}

/// `cmd` with the defaults of configuration `text` (read from `file`) applied.
pub fn apply(mut cmd: clap::Command, text: &str, file: &Path) -> Result<clap::Command> {
    let bad = |what: String| Error::refused(format!("configuration {}: {what}", file.display()));
    let table: toml::Table = text.parse().map_err(|e| bad(format!("{e}")))?;
    for (key, value) in &table {
        if let toml::Value::Table(t) = value {
            let path: Vec<&str> = key.split_whitespace().collect();
            cmd = with_subcommand(cmd, &path, &|sub| {
                let mut sub = sub;
                for (k, v) in t {
                    sub = set_default(sub, k, v, true).map_err(|w| bad(format!("[{key}] {w}")))?;
                }
                Ok(sub)
            })
            .map_err(|e| match e {
                Nested::Missing => bad(format!("[{key}] is not a strata command")),
                Nested::Err(e) => e,
            })?;
        } else {
            let before = count_defaults(&cmd);
            cmd = set_everywhere(cmd, key, value).map_err(&bad)?;
            if count_defaults(&cmd) == before && !has_flag(&cmd, key) {
                return Err(bad(format!("no command has a flag --{}", flag(key))));
            }
        }
    }
    Ok(cmd)
}

enum Nested {
    Missing,
    Err(Error),
}

/// Apply `f` to the subcommand at `path` (`["rootfs", "start"]`).
fn with_subcommand(
    cmd: clap::Command,
    path: &[&str],
    f: &dyn Fn(clap::Command) -> Result<clap::Command>,
) -> std::result::Result<clap::Command, Nested> {
    let Some((first, rest)) = path.split_first() else {
        return f(cmd).map_err(Nested::Err);
    };
    let Some(sub) = cmd.find_subcommand(first).cloned() else {
        return Err(Nested::Missing);
    };
    let sub = with_subcommand(sub, rest, f)?;
    Ok(cmd.mut_subcommand(*first, |_| sub))
}

/// `max_nodes` and `max-nodes` both name `--max-nodes`.
fn flag(key: &str) -> String {
    key.replace('_', "-")
}

fn has_flag(cmd: &clap::Command, key: &str) -> bool {
    let long = flag(key);
    cmd.get_arguments()
        .any(|a| a.get_long() == Some(long.as_str()))
        || cmd.get_subcommands().any(|s| has_flag(s, key))
}

fn count_defaults(cmd: &clap::Command) -> usize {
    cmd.get_arguments()
        .filter(|a| !a.get_default_values().is_empty())
        .count()
        + cmd.get_subcommands().map(count_defaults).sum::<usize>()
}

/// A top-level key: the default of that flag in every command that has it.
fn set_everywhere(
    cmd: clap::Command,
    key: &str,
    value: &toml::Value,
) -> std::result::Result<clap::Command, String> {
    let mut cmd = set_default(cmd, key, value, false)?;
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for n in names {
        if let Some(sub) = cmd.find_subcommand(&n).cloned() {
            let sub = set_everywhere(sub, key, value)?;
            cmd = cmd.mut_subcommand(n, |_| sub);
        }
    }
    Ok(cmd)
}

/// Make `value` the default of `cmd`'s flag `--key`; `required`: the flag must exist.
fn set_default(
    cmd: clap::Command,
    key: &str,
    value: &toml::Value,
    required: bool,
) -> std::result::Result<clap::Command, String> {
    let long = flag(key);
    let Some(id) = cmd
        .get_arguments()
        .find(|a| a.get_long() == Some(long.as_str()))
        .map(|a| a.get_id().clone())
    else {
        return if required {
            Err(format!("`{}` has no flag --{long}", cmd.get_name()))
        } else {
            Ok(cmd)
        };
    };
    let values: Vec<String> = match value {
        toml::Value::String(s) => vec![s.clone()],
        toml::Value::Integer(i) => vec![i.to_string()],
        toml::Value::Boolean(b) => vec![b.to_string()],
        toml::Value::Array(items) => items
            .iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                _ => Err(format!("{key}: a list of strings or integers was expected")),
            })
            .collect::<std::result::Result<_, _>>()?,
        _ => {
            return Err(format!(
                "{key}: a string, an integer, a boolean or a list was expected"
            ))
        }
    };
    Ok(cmd.mut_arg(id, |a| a.default_values(values)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn matches(text: &str, args: &[&str]) -> Result<clap::ArgMatches> {
        let cmd = apply(crate::Cli::command(), text, Path::new("test.toml"))?;
        cmd.try_get_matches_from(args)
            .map_err(|e| Error::refused(e.to_string()))
    }

    #[test]
    fn file_defaults_flags_and_the_command_line_wins() {
        let text = "store = \"/srv/strata\"\n[daemon]\napi = \"/run/x/api.sock\"\n\
                    max_nodes = 7\nallow = [\"/a\", \"/b\"]\n[\"rootfs status\"]\n\
                    api = \"/run/y.sock\"\n";
        let store = |args: &[&str]| {
            let m = matches(text, args).unwrap();
            m.subcommand_matches("gc")
                .and_then(|g| g.get_one::<PathBuf>("store").cloned())
                .unwrap()
        };
        assert_eq!(store(&["strata", "gc"]), Path::new("/srv/strata"));
        assert_eq!(store(&["strata", "gc", "--store", "/x"]), Path::new("/x"));
        let m = matches(text, &["strata", "daemon"]).unwrap();
        let d = m.subcommand_matches("daemon").unwrap();
        assert_eq!(
            d.get_one::<PathBuf>("api").unwrap(),
            Path::new("/run/x/api.sock")
        );
        assert_eq!(d.get_one::<usize>("max_nodes"), Some(&7));
        let allow: Vec<&PathBuf> = d.get_many::<PathBuf>("allow").unwrap().collect();
        assert_eq!(allow, [Path::new("/a"), Path::new("/b")]);
        assert_eq!(
            d.get_one::<PathBuf>("store").unwrap(),
            Path::new("/srv/strata")
        );
        let m = matches(text, &["strata", "rootfs", "status"]).unwrap();
        let st = m
            .subcommand_matches("rootfs")
            .and_then(|r| r.subcommand_matches("status"));
        assert_eq!(
            st.unwrap().get_one::<PathBuf>("api").unwrap(),
            Path::new("/run/y.sock")
        );
    }

    #[test]
    fn typos_are_refused() {
        for bad in [
            "stor = \"/x\"",
            "[daemon]\nmax_node = 1",
            "[demon]\napi = \"/x\"",
            "store = 1.5",
            "store = [",
        ] {
            assert!(
                matches(bad, &["strata", "gc"]).is_err(),
                "{bad:?} was accepted"
            );
        }
    }
}
