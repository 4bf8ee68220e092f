//! One module per verb, each `run` returning [`crate::error::Result`].

pub mod completion;
pub mod daemon;
pub mod gc;
pub mod guest;
pub mod image;
pub mod initramfs;
pub mod man;
pub mod rootfs;
pub mod run;
pub mod serve;
pub mod trace;

#[cfg(feature = "lab")]
pub mod bench;
#[cfg(feature = "lab")]
pub mod bench_guest;
#[cfg(feature = "lab")]
pub mod bench_requests;
#[cfg(feature = "lab")]
pub mod bench_soak;
#[cfg(feature = "lab")]
pub mod demo;
#[cfg(feature = "lab")]
pub mod lab;

/// This `strata` binary (it goes into guests) and the working directory of a host-side job:
/// `given`, or a new temp dir kept alive by `tmp`.
#[cfg(feature = "lab")]
fn binary_and_workdir(
    job: &str,
    given: Option<std::path::PathBuf>,
    tmp: &mut Option<tempfile::TempDir>,
) -> crate::error::Result<(std::path::PathBuf, std::path::PathBuf)> {
    use crate::error::Error;
    let strata = std::env::current_exe()
        .map_err(|e| Error::failed(format!("cannot find my own binary: {e}")))?;
    let dir = match given {
        Some(d) => d,
        None => {
            let t = tempfile::Builder::new()
                .prefix(&format!("strata-{job}-"))
                .tempdir()
                .map_err(|e| Error::failed(format!("cannot create a temp dir: {e}")))?;
            tmp.insert(t).path().to_owned()
        }
    };
    Ok((strata, dir))
}
