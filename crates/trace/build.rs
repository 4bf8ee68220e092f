//! With the `bpf` feature (default): compile the BPF programs (src/bpf/trace.bpf.c, CO-RE)
//! with clang and generate their skeleton. Needs clang; no kernel headers and no BTF on the
//! build machine: the kernel types the programs use are declared in src/bpf/kernel.h and
//! relocated at load time. Without the feature there is nothing to build.

// A build script fails by panicking: there is no caller to return an error to.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[cfg(feature = "bpf")]
fn main() {
    use std::path::PathBuf;
    const SRC: &str = "src/bpf/trace.bpf.c";
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("trace.skel.rs");
    if let Err(e) = libbpf_cargo::SkeletonBuilder::new()
        .source(SRC)
        .clang_args(["-I", "src/bpf", "-Wall", "-Werror"])
        .build_and_generate(&out)
    {
        panic!(
            "building {SRC} failed (is clang installed? scripts/install-deps.sh; or build \
             without the `bpf` feature): {e:#}"
        );
    }
    for f in [SRC, "src/bpf/kernel.h", "src/bpf/records.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
}

#[cfg(not(feature = "bpf"))]
fn main() {}
