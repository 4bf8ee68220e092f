//! The kernel command line: kernel-style tokenizing and the `strata.*` parameters.

use strata_plan::DEFAULT_TAG;

/// The command run when the command line has no `strata.cmd=`.
pub const DEFAULT_CMD: &str = "/sbin/init";

/// One kernel command line parameter, quotes removed the way the kernel removes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub key: String,
    /// `None` for a bare flag (`quiet`), `Some("")` for `key=`.
    pub value: Option<String>,
}

/// The kernel's `isspace()`.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Split a kernel command line into parameters exactly like the kernel's `next_arg()`
/// (lib/cmdline.c): whitespace separates parameters except inside double quotes; a value that
/// starts with `"` loses that quote and a trailing one (`a="x y"` → `a` = `x y`), and a
/// parameter that starts with `"` loses its surrounding quotes (`"a=x y"` → `a` = `x y`).
/// Inner quotes are kept. Stops at `--` (what follows is for init, not parameters).
pub fn tokenize(cmdline: &str) -> Vec<Param> {
    let b = cmdline.as_bytes();
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        while pos < b.len() && is_space(b[pos]) {
            pos += 1;
        }
        if pos >= b.len() {
            break;
        }
        let mut start = pos;
        let mut in_quote = false;
        let mut quoted = false;
        if b[start] == b'"' {
            start += 1;
            in_quote = true;
            quoted = true;
        }
        let mut i = start;
        let mut equals = None;
        while i < b.len() {
            if is_space(b[i]) && !in_quote {
                break;
            }
            // Like the kernel, an `=` in the very first position does not count.
            if equals.is_none() && b[i] == b'=' && i > start {
                equals = Some(i);
            }
            if b[i] == b'"' {
                in_quote = !in_quote;
            }
            i += 1;
        }
        let end = i;
        // A leading quote on the whole parameter drops the trailing one.
        let trimmed_end = if quoted && end > start && b[end - 1] == b'"' {
            end - 1
        } else {
            end
        };
        // All cut positions are at ASCII bytes, so the slices are on char boundaries.
        let param = match equals {
            None => Param {
                key: cmdline[start..trimmed_end].to_string(),
                value: None,
            },
            Some(eq) => {
                let mut vstart = eq + 1;
                let mut vend = trimmed_end;
                if vstart < end && b[vstart] == b'"' {
                    vstart += 1;
                    if b[end - 1] == b'"' {
                        vend = vend.min(end - 1);
                    }
                }
                let vend = vend.max(vstart);
                Param {
                    key: cmdline[start..eq].to_string(),
                    value: Some(cmdline[vstart..vend].to_string()),
                }
            }
        };
        pos = end;
        if param.key == "--" && param.value.is_none() {
            break;
        }
        if !param.key.is_empty() {
            out.push(param);
        }
    }
    out
}

/// Split a command (the `strata.cmd=` value) into argv, POSIX-shell style without any
/// expansion: whitespace separates words, `'...'` quotes literally, `"..."` quotes with `\"`
/// and `\\` escapes, and a backslash outside quotes escapes the next character.
///
/// The kernel already removed the outer double quotes of `strata.cmd="..."`, so single quotes
/// are the way to pass an argument with spaces: `strata.cmd="/bin/sh -c 'echo hi'"`.
pub fn split_command(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated single quote in command {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => {
                                return Err(format!("unterminated double quote in command {s:?}"))
                            }
                        },
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated double quote in command {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err(format!("command {s:?} ends with a lone backslash")),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// How to stop the VM once the command has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExitAction {
    /// `reboot(RB_POWER_OFF)`: needs ACPI (or another power-off driver) in the VM.
    #[default]
    PowerOff,
    /// `reboot(RB_AUTOBOOT)`: with `qemu -no-reboot` this also ends the VM, on any machine type.
    Reboot,
}

/// What `strata guest init` takes from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `strata.tag=`: the virtio-fs tag to mount.
    pub tag: String,
    /// `strata.cmd=`: argv of the command to run in the new root.
    pub cmd: Vec<String>,
    /// `strata.debug=1`: verbose logging.
    pub debug: bool,
    /// `strata.exit=poweroff|reboot`.
    pub exit: ExitAction,
    /// `strata.run=1`: run a container: its spec, stdio and exit status on virtio-serial
    /// ports ([`strata_plan::control`]) instead of `strata.cmd` on the console.
    pub run: bool,
    /// Things worth telling the user that are not fatal (unknown `strata.*` keys, ...).
    pub warnings: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tag: DEFAULT_TAG.to_string(),
            cmd: vec![DEFAULT_CMD.to_string()],
            debug: false,
            exit: ExitAction::PowerOff,
            run: false,
            warnings: Vec::new(),
        }
    }
}

fn parse_bool(key: &str, value: Option<&str>, warnings: &mut Vec<String>) -> bool {
    match value {
        None => true,
        Some("1" | "y" | "yes" | "true" | "on") => true,
        Some("0" | "n" | "no" | "false" | "off") => false,
        Some(other) => {
            warnings.push(format!(
                "{key}={other:?} is not a boolean (use 1 or 0); taken as 0"
            ));
            false
        }
    }
}

impl Config {
    /// Read the `strata.*` parameters of a kernel command line (later ones win, like the
    /// kernel). Errors only for a `strata.cmd` that cannot become an argv.
    pub fn from_cmdline(cmdline: &str) -> Result<Config, String> {
        let mut cfg = Config::default();
        for Param { key, value } in tokenize(cmdline) {
            match key.as_str() {
                "strata.tag" => match value {
                    Some(v) if !v.is_empty() => cfg.tag = v,
                    _ => cfg.warnings.push(format!("strata.tag has no value; using {DEFAULT_TAG:?}")),
                },
                "strata.cmd" => {
                    let v = value.unwrap_or_default();
                    let argv = split_command(&v).map_err(|e| format!("strata.cmd: {e}"))?;
                    if argv.is_empty() {
                        return Err(format!(
                            "strata.cmd is empty; give a program, e.g. strata.cmd=\"/bin/sh -l\" (default {DEFAULT_CMD})"
                        ));
                    }
                    cfg.cmd = argv;
                }
                "strata.debug" => cfg.debug = parse_bool(&key, value.as_deref(), &mut cfg.warnings),
                "strata.run" => cfg.run = parse_bool(&key, value.as_deref(), &mut cfg.warnings),
                "strata.exit" => match value.as_deref() {
                    Some("poweroff") => cfg.exit = ExitAction::PowerOff,
                    Some("reboot") => cfg.exit = ExitAction::Reboot,
                    other => cfg.warnings.push(format!(
                        "strata.exit={} is not poweroff or reboot; using poweroff",
                        other.unwrap_or("")
                    )),
                },
                k if k.starts_with("strata.") => cfg.warnings.push(format!(
                    "unknown parameter {k} ignored (known: strata.tag, strata.cmd, strata.debug, strata.exit, strata.run)"
                )),
                _ => {}
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(key: &str, value: Option<&str>) -> Param {
        Param {
            key: key.into(),
            value: value.map(Into::into),
        }
    }

    #[test]
    fn tokenize_plain() {
        assert_eq!(
            tokenize("console=ttyS0 quiet  root=/dev/vda1\n"),
            [
                p("console", Some("ttyS0")),
                p("quiet", None),
                p("root", Some("/dev/vda1"))
            ]
        );
        assert_eq!(tokenize(""), []);
        assert_eq!(tokenize("  \n"), []);
        assert_eq!(tokenize("a= b"), [p("a", Some("")), p("b", None)]);
    }

    #[test]
    fn tokenize_quoted_value() {
        assert_eq!(
            tokenize(r#"console=ttyS0 strata.cmd="/bin/sh /test.sh arg" strata.debug=1"#),
            [
                p("console", Some("ttyS0")),
                p("strata.cmd", Some("/bin/sh /test.sh arg")),
                p("strata.debug", Some("1")),
            ]
        );
    }

    #[test]
    fn tokenize_kernel_quote_rules() {
        // Whole parameter quoted.
        assert_eq!(
            tokenize(r#""a=x y" b"#),
            [p("a", Some("x y")), p("b", None)]
        );
        // Quote in the middle of a value: grouping, quotes kept (kernel behaviour).
        assert_eq!(tokenize(r#"a=x"y z"w"#), [p("a", Some(r#"x"y z"w"#))]);
        // Value quote only at the start and unterminated: runs to the end of the line.
        assert_eq!(tokenize(r#"a="x y"#), [p("a", Some("x y"))]);
        // A lone quote as value.
        assert_eq!(tokenize(r#"a=" b"#), [p("a", Some(" b"))]);
        assert_eq!(tokenize(r#"a=""#), [p("a", Some(""))]);
        // Only the first `=` splits; `=` at the start does not count.
        assert_eq!(tokenize("a=b=c =x"), [p("a", Some("b=c")), p("=x", None)]);
        // Tabs and newlines separate.
        assert_eq!(
            tokenize("a\tb\nc"),
            [p("a", None), p("b", None), p("c", None)]
        );
    }

    #[test]
    fn tokenize_stops_at_double_dash() {
        assert_eq!(tokenize("a=1 -- strata.tag=x single"), [p("a", Some("1"))]);
        assert_eq!(tokenize("--x a"), [p("--x", None), p("a", None)]);
    }

    #[test]
    fn tokenize_non_ascii() {
        assert_eq!(
            tokenize("a=é\"ü ö\" ß"),
            [p("a", Some("é\"ü ö\"")), p("ß", None)]
        );
    }

    #[test]
    fn split_command_words() {
        assert_eq!(
            split_command("/bin/sh /test.sh arg").unwrap(),
            ["/bin/sh", "/test.sh", "arg"]
        );
        assert_eq!(split_command("  /sbin/init  ").unwrap(), ["/sbin/init"]);
        assert_eq!(split_command("").unwrap(), Vec::<String>::new());
        assert_eq!(
            split_command("/bin/sh -c 'echo a  b' ''").unwrap(),
            ["/bin/sh", "-c", "echo a  b", ""]
        );
        assert_eq!(
            split_command(r#"x "a \"b\" \n" c\ d"#).unwrap(),
            ["x", r#"a "b" \n"#, "c d"]
        );
        assert_eq!(split_command("a'b c'd").unwrap(), ["ab cd"]);
        assert!(split_command("'oops").is_err());
        assert!(split_command("\"oops").is_err());
        assert!(split_command("oops\\").is_err());
    }

    #[test]
    fn config_defaults() {
        let c = Config::from_cmdline("console=ttyS0 quiet\n").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.tag, "strata");
        assert_eq!(c.cmd, ["/sbin/init"]);
        assert!(!c.debug);
    }

    #[test]
    fn config_from_cmdline() {
        let c = Config::from_cmdline(
            "console=ttyS0 strata.tag=rootfs strata.cmd=\"/bin/sh /test.sh arg\" strata.debug=1 strata.exit=reboot\n",
        )
        .unwrap();
        assert_eq!(c.tag, "rootfs");
        assert_eq!(c.cmd, ["/bin/sh", "/test.sh", "arg"]);
        assert!(c.debug);
        assert_eq!(c.exit, ExitAction::Reboot);
        assert!(c.warnings.is_empty());

        let c = Config::from_cmdline("strata.cmd=/bin/true strata.debug strata.cmd=/bin/false")
            .unwrap();
        assert_eq!(c.cmd, ["/bin/false"]);
        assert!(c.debug);

        let c = Config::from_cmdline("strata.cmd=\"/bin/sh -c 'echo hello world'\"").unwrap();
        assert_eq!(c.cmd, ["/bin/sh", "-c", "echo hello world"]);
    }

    #[test]
    fn config_problems() {
        assert!(Config::from_cmdline("strata.cmd=").is_err());
        assert!(Config::from_cmdline("strata.cmd=\"  \"").is_err());
        assert!(Config::from_cmdline("strata.cmd=\"sh -c 'x\"").is_err());
        let c =
            Config::from_cmdline("strata.debug=maybe strata.tagg=x strata.tag= strata.exit=halt")
                .unwrap();
        assert!(!c.debug);
        assert_eq!(c.tag, "strata");
        assert_eq!(c.exit, ExitAction::PowerOff);
        assert_eq!(c.warnings.len(), 4, "{:?}", c.warnings);
    }
}
