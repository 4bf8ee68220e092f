//! `/proc/kallsyms` (or a `System.map`): which of the symbols we care about the kernel has.
//!
//! Every user can read the names; the addresses are zeros unless the reader is privileged
//! (`kernel.kptr_restrict`, CAP_SYSLOG). Data symbols (variables such as `shrinker_rwsem`)
//! are only listed with `CONFIG_KALLSYMS_ALL`; functions always are.

use std::collections::BTreeMap;

/// A symbol found: its address (0 when hidden) and its `nm` type letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sym {
    pub addr: u64,
    pub kind: char,
}

/// What a kallsyms listing says about a set of wanted names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kallsyms {
    /// Lines read.
    pub lines: usize,
    /// Whether any address was non-zero (the reader may see addresses).
    pub addresses_visible: bool,
    /// Whether variables are listed (`CONFIG_KALLSYMS_ALL`): some well-known data symbol is.
    pub data_symbols: bool,
    /// The wanted names that were found (core kernel only, not modules).
    pub found: BTreeMap<String, Sym>,
}

/// Variables every kernel has; one of them listed means data symbols are listed.
const DATA_MARKERS: &[&str] = &["init_task", "init_mm", "jiffies_64", "init_nsproxy"];

impl Kallsyms {
    /// Scan a listing for `wanted` names. Module symbols (`name [module]`) are skipped.
    pub fn scan(text: &str, wanted: &[&str]) -> Kallsyms {
        let mut k = Kallsyms::default();
        for line in text.lines() {
            let mut f = line.split_ascii_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            k.lines += 1;
            if f.next().is_some() {
                continue; // a module's symbol
            }
            let addr = u64::from_str_radix(addr, 16).unwrap_or(0);
            if addr != 0 {
                k.addresses_visible = true;
            }
            if DATA_MARKERS.contains(&name) {
                k.data_symbols = true;
            }
            if wanted.contains(&name) {
                let kind = kind.chars().next().unwrap_or('?');
                k.found
                    .entry(name.to_string())
                    .or_insert(Sym { addr, kind });
            }
        }
        k
    }

    pub fn has(&self, name: &str) -> bool {
        self.found.contains_key(name)
    }

    /// The address of `name`, when listed and visible.
    pub fn addr(&self, name: &str) -> Option<u64> {
        self.found.get(name).map(|s| s.addr).filter(|&a| a != 0)
    }
}

/// Kernel addresses → function names (text symbols of the kernel and its modules).
#[derive(Debug, Default)]
pub struct Symbolizer {
    syms: Vec<(u64, String)>,
}

impl Symbolizer {
    pub fn from_text(text: &str) -> Symbolizer {
        let mut syms: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut f = line.split_ascii_whitespace();
                let (addr, kind, name) = (f.next()?, f.next()?, f.next()?);
                if !matches!(kind, "t" | "T" | "w" | "W") {
                    return None;
                }
                let addr = u64::from_str_radix(addr, 16).ok().filter(|&a| a != 0)?;
                Some((addr, name.to_string()))
            })
            .collect();
        syms.sort_unstable();
        Symbolizer { syms }
    }

    /// `/proc/kallsyms` (empty when unreadable: addresses then print in hex).
    pub fn load() -> Symbolizer {
        Symbolizer::from_text(&std::fs::read_to_string("/proc/kallsyms").unwrap_or_default())
    }

    /// The function containing `addr` (the nearest symbol at or below it), else the address.
    pub fn name(&self, addr: u64) -> String {
        let i = self.syms.partition_point(|(a, _)| *a <= addr);
        match i.checked_sub(1).map(|i| &self.syms[i]) {
            Some((_, n)) => n.clone(),
            None => format!("{addr:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn symbolizes_addresses() {
        let s = super::Symbolizer::from_text(
            "ffffffff81000000 T _stext\nffffffff8125d2a0 t do_shrink_slab\nffffffff82b5f8a0 d shrinker_rwsem\nffffffffc0a01000 t some_fn\t[overlay]\n",
        );
        assert_eq!(s.name(0xffffffff8125d2a0), "do_shrink_slab");
        assert_eq!(s.name(0xffffffff8125d2b7), "do_shrink_slab");
        // Data symbols are not functions: an address past the last text symbol before it.
        assert_eq!(s.name(0xffffffff82b5f8a0), "do_shrink_slab");
        assert_eq!(s.name(0xffffffffc0a01010), "some_fn");
        assert_eq!(s.name(0x10), "0x10");
    }

    use super::*;

    #[test]
    fn scans_names_types_and_visibility() {
        let text = "\
ffffffff82a0c1e0 D init_task
ffffffff8125d2a0 t do_shrink_slab
ffffffff82b5f8a0 d shrinker_rwsem
ffffffffc0a01000 t some_fn\t[overlay]
";
        let k = Kallsyms::scan(text, &["shrinker_rwsem", "do_shrink_slab", "some_fn"]);
        assert_eq!(k.lines, 4);
        assert!(k.addresses_visible && k.data_symbols);
        assert_eq!(
            k.found["shrinker_rwsem"],
            Sym {
                addr: 0xffffffff82b5f8a0,
                kind: 'd'
            }
        );
        assert!(
            !k.has("some_fn"),
            "module symbols are not the core kernel's"
        );
        assert_eq!(k.addr("do_shrink_slab"), Some(0xffffffff8125d2a0));
    }

    #[test]
    fn hidden_addresses() {
        let k = Kallsyms::scan("0000000000000000 t do_shrink_slab\n", &["do_shrink_slab"]);
        assert!(!k.addresses_visible && !k.data_symbols);
        assert!(k.has("do_shrink_slab"));
        assert_eq!(k.addr("do_shrink_slab"), None);
    }
}
