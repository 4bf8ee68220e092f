//! A minimal reader of kernel BTF (`/sys/kernel/btf/vmlinux`, or the `.BTF` section of a
//! `vmlinux` ELF): enough to list a struct's members and to look up function names. No libbpf.
//!
//! Format: `include/uapi/linux/btf.h`. Type ids start at 1 (0 is `void`); every type is a
//! 12-byte `btf_type` followed by kind-specific data.

use std::collections::HashMap;

/// BTF kinds this reader needs to tell apart (the rest are only skipped).
const KIND_INT: u8 = 1;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_DECL_TAG: u8 = 17;
const KIND_ENUM64: u8 = 19;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF (no 0xeB9F magic) and not an ELF file with a .BTF section")]
    NotBtf,
    #[error("truncated or corrupt BTF: {0}")]
    Corrupt(&'static str),
    #[error("unknown BTF kind {0}")]
    UnknownKind(u8),
}

/// One struct or union member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub type_id: u32,
    /// Offset from the start of the struct, in bits.
    pub bit_offset: u32,
}

#[derive(Debug, Clone, Copy)]
struct Ty {
    kind: u8,
    vlen: u16,
    kind_flag: bool,
    /// Offset of the kind-specific data following the 12-byte header, in `types`.
    data: usize,
}

/// Parsed BTF: the type table and the string section.
pub struct Btf {
    big_endian: bool,
    types: Vec<u8>,
    strings: Vec<u8>,
    /// Index `i` describes type id `i + 1`.
    index: Vec<Ty>,
    /// Name → type ids, for named structs, unions and functions.
    by_name: HashMap<String, Vec<u32>>,
}

impl Btf {
    /// Parse raw BTF, or find the `.BTF` section in an ELF64 file and parse that.
    pub fn parse(bytes: &[u8]) -> Result<Btf, BtfError> {
        if bytes.starts_with(b"\x7fELF") {
            let sec = elf_section(bytes, ".BTF").ok_or(BtfError::NotBtf)?;
            return Self::parse_raw(sec);
        }
        Self::parse_raw(bytes)
    }

    fn parse_raw(b: &[u8]) -> Result<Btf, BtfError> {
        if b.len() < 24 {
            return Err(BtfError::NotBtf);
        }
        // The magic 0xeB9F, in the byte order of the kernel that wrote it.
        let big_endian = match (b[0], b[1]) {
            (0x9f, 0xeb) => false,
            (0xeb, 0x9f) => true,
            _ => return Err(BtfError::NotBtf),
        };
        let u32_at = |o: usize| read_u32(b, o, big_endian).ok_or(BtfError::Corrupt("header"));
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            b.get(start..start.checked_add(len)?)
        };
        let types = section(type_off, type_len)
            .ok_or(BtfError::Corrupt("type section out of bounds"))?
            .to_vec();
        let strings = section(str_off, str_len)
            .ok_or(BtfError::Corrupt("string section out of bounds"))?
            .to_vec();
        let mut btf = Btf {
            big_endian,
            types,
            strings,
            index: Vec::new(),
            by_name: HashMap::new(),
        };
        btf.build_index()?;
        Ok(btf)
    }

    fn u32(&self, off: usize) -> Result<u32, BtfError> {
        read_u32(&self.types, off, self.big_endian).ok_or(BtfError::Corrupt("type data"))
    }

    fn build_index(&mut self) -> Result<(), BtfError> {
        let mut off = 0;
        while off < self.types.len() {
            let name_off = self.u32(off)?;
            let info = self.u32(off + 4)?;
            let kind = ((info >> 24) & 0x1f) as u8;
            let vlen = (info & 0xffff) as u16;
            let kind_flag = info >> 31 == 1;
            let data = off + 12;
            let n = vlen as usize;
            let extra = match kind {
                KIND_INT => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => 12 * n,
                KIND_ENUM => 8 * n,
                KIND_FUNC_PROTO => 8 * n,
                KIND_VAR => 4,
                KIND_DATASEC => 12 * n,
                KIND_DECL_TAG => 4,
                KIND_ENUM64 => 12 * n,
                // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
                2 | 7..=11 | KIND_FUNC | 16 | 18 => 0,
                k => return Err(BtfError::UnknownKind(k)),
            };
            if data + extra > self.types.len() {
                return Err(BtfError::Corrupt("type runs past the type section"));
            }
            let id = self.index.len() as u32 + 1;
            self.index.push(Ty {
                kind,
                vlen,
                kind_flag,
                data,
            });
            if matches!(kind, KIND_STRUCT | KIND_UNION | KIND_FUNC) && name_off != 0 {
                let name = self.str_at(name_off)?.to_string();
                self.by_name.entry(name).or_default().push(id);
            }
            off = data + extra;
        }
        Ok(())
    }

    fn str_at(&self, off: u32) -> Result<&str, BtfError> {
        let s = self
            .strings
            .get(off as usize..)
            .ok_or(BtfError::Corrupt("string offset"))?;
        let end = s
            .iter()
            .position(|&c| c == 0)
            .ok_or(BtfError::Corrupt("unterminated string"))?;
        std::str::from_utf8(&s[..end]).map_err(|_| BtfError::Corrupt("string not UTF-8"))
    }

    /// Number of types (the highest type id).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn named(&self, name: &str, kind: u8) -> Option<&Ty> {
        self.by_name
            .get(name)?
            .iter()
            .map(|&id| &self.index[id as usize - 1])
            .find(|t| t.kind == kind)
    }

    /// Whether BTF describes a function of this name (`BTF_KIND_FUNC`).
    pub fn has_func(&self, name: &str) -> bool {
        self.named(name, KIND_FUNC).is_some()
    }

    /// The members of `struct NAME` (the first complete definition), or None.
    pub fn struct_members(&self, name: &str) -> Option<Vec<Member>> {
        let t = self.named(name, KIND_STRUCT)?;
        let mut members = Vec::with_capacity(t.vlen as usize);
        for i in 0..t.vlen as usize {
            let m = t.data + 12 * i;
            let name = self.str_at(self.u32(m).ok()?).ok()?.to_string();
            let type_id = self.u32(m + 4).ok()?;
            let raw = self.u32(m + 8).ok()?;
            // With kind_flag set, the top 8 bits are the bitfield size.
            let bit_offset = if t.kind_flag { raw & 0x00ff_ffff } else { raw };
            members.push(Member {
                name,
                type_id,
                bit_offset,
            });
        }
        Some(members)
    }
}

fn read_u32(b: &[u8], off: usize, big_endian: bool) -> Option<u32> {
    let a: [u8; 4] = b.get(off..off.checked_add(4)?)?.try_into().ok()?;
    Some(if big_endian {
        u32::from_be_bytes(a)
    } else {
        u32::from_le_bytes(a)
    })
}

/// The contents of section `name` of a little-endian ELF64 file.
fn elf_section<'a>(b: &'a [u8], name: &str) -> Option<&'a [u8]> {
    if b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return None; // not ELFCLASS64 / ELFDATA2LSB
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| read_u32(b, o, false);
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let shoff = u64_at(0x28)? as usize;
    let shentsize = u16_at(0x3a)? as usize;
    let shnum = u16_at(0x3c)? as usize;
    let shstrndx = u16_at(0x3e)? as usize;
    let sh = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    let strtab = sh(shstrndx)?;
    let (str_off, str_size) = (
        u64_at(strtab + 0x18)? as usize,
        u64_at(strtab + 0x20)? as usize,
    );
    let names = b.get(str_off..str_off.checked_add(str_size)?)?;
    for i in 0..shnum {
        let h = sh(i)?;
        let n = u32_at(h)? as usize;
        let sname = names.get(n..)?;
        let end = sname.iter().position(|&c| c == 0)?;
        if &sname[..end] == name.as_bytes() {
            let (off, size) = (u64_at(h + 0x18)? as usize, u64_at(h + 0x20)? as usize);
            return b.get(off..off.checked_add(size)?);
        }
    }
    None
}

/// Builds small BTF blobs for tests.
#[cfg(test)]
pub(crate) mod build {
    /// A BTF writer: `int`, structs whose members are all `int`, and functions.
    pub struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        pub fn new() -> Builder {
            let mut b = Builder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            };
            // [1] int
            let name = b.string("int");
            b.header(name, 1, 0, 4);
            b.types
                .extend_from_slice(&((32u32) | (1 << 24)).to_le_bytes());
            b
        }

        fn string(&mut self, s: &str) -> u32 {
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn header(&mut self, name_off: u32, kind: u32, vlen: u32, size_or_type: u32) -> u32 {
            self.types.extend_from_slice(&name_off.to_le_bytes());
            self.types
                .extend_from_slice(&((kind << 24) | vlen).to_le_bytes());
            self.types.extend_from_slice(&size_or_type.to_le_bytes());
            self.next_id += 1;
            self.next_id - 1
        }

        pub fn strukt(&mut self, name: &str, members: &[&str]) -> &mut Self {
            let n = self.string(name);
            let names: Vec<u32> = members.iter().map(|m| self.string(m)).collect();
            self.header(n, 4, members.len() as u32, 4 * members.len() as u32);
            for (i, m) in names.into_iter().enumerate() {
                self.types.extend_from_slice(&m.to_le_bytes());
                self.types.extend_from_slice(&1u32.to_le_bytes());
                self.types.extend_from_slice(&(32 * i as u32).to_le_bytes());
            }
            self
        }

        pub fn func(&mut self, name: &str) -> &mut Self {
            // FUNC_PROTO returning int, no params, then the FUNC.
            let proto = self.header(0, 13, 0, 1);
            let n = self.string(name);
            self.header(n, 12, 0, proto);
            self
        }

        pub fn bytes(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&0xeb9fu16.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            out.extend_from_slice(&24u32.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&(self.types.len() as u32).to_le_bytes());
            out.extend_from_slice(&(self.types.len() as u32).to_le_bytes());
            out.extend_from_slice(&(self.strings.len() as u32).to_le_bytes());
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_and_funcs() {
        let blob = build::Builder::new()
            .strukt("shrinker", &["count_objects", "refcount", "rcu"])
            .func("shrinker_free_rcu_cb")
            .bytes();
        let btf = Btf::parse(&blob).unwrap();
        assert_eq!(btf.len(), 4);
        let m = btf.struct_members("shrinker").unwrap();
        let names: Vec<_> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["count_objects", "refcount", "rcu"]);
        assert_eq!(m[2].bit_offset, 64);
        assert!(btf.has_func("shrinker_free_rcu_cb"));
        assert!(!btf.has_func("shrinker"));
        assert!(btf.struct_members("shrinker_free_rcu_cb").is_none());
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert_eq!(Btf::parse(b"hello").err(), Some(BtfError::NotBtf));
        let mut blob = build::Builder::new().strukt("s", &["a"]).bytes();
        // Claim a longer type section than there is.
        blob[12] = 0xff;
        assert!(Btf::parse(&blob).is_err());
    }

    #[test]
    fn finds_btf_in_elf() {
        let btf = build::Builder::new().strukt("shrinker", &["list"]).bytes();
        // ELF64 LE with three sections: null, .BTF, .shstrtab.
        let shstr = b"\0.BTF\0.shstrtab\0";
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        let btf_off = elf.len();
        elf.extend_from_slice(&btf);
        let str_off = elf.len();
        elf.extend_from_slice(shstr);
        let shoff = elf.len();
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        for (name, off, size) in [
            (0u32, 0usize, 0usize),
            (1, btf_off, btf.len()),
            (6, str_off, shstr.len()),
        ] {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        }
        let parsed = Btf::parse(&elf).unwrap();
        assert_eq!(parsed.struct_members("shrinker").unwrap()[0].name, "list");
    }

    /// The running kernel's BTF, when there is one: the parser walks all of it.
    #[test]
    fn parses_this_kernel() {
        let Ok(bytes) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            return;
        };
        let btf = Btf::parse(&bytes).unwrap();
        assert!(btf.len() > 1000);
        assert!(btf.struct_members("task_struct").is_some());
    }
}
