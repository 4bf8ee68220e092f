//! Image references, spelled as the tools people use spell them.
//!
//! One normalisation for import and lookup, the one docker, containerd and skopeo share:
//! `debian` ≡ `docker.io/library/debian:latest`, `ux/app:1` ≡ `docker.io/ux/app:1`, a first
//! component with a `.` or `:` (or `localhost`) is a registry and stays, a missing tag is
//! `latest` unless a digest is given. Names are stored normalised; lookups normalise too.

/// The normalised form of `reference`, or why it is not a reference.
pub fn normalize(reference: &str) -> Result<String, String> {
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    if let Some(d) = digest {
        let ok = d
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err(format!("digest {d:?} is not sha256:<64 hex digits>"));
        }
    }
    // The tag is after the last ':' that follows the last '/' (a registry port is not a tag).
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match name[slash..].rfind(':') {
        Some(i) => (&name[..slash + i], Some(&name[slash + i + 1..])),
        None => (name, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
            });
        if !ok {
            return Err(format!(
                "tag {t:?} is not valid ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})"
            ));
        }
    }
    let (domain, repo) = match path.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => ("docker.io".to_string(), path.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io".to_string()
    } else {
        domain
    };
    let repo = if domain == "docker.io" && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo
    };
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && c.as_bytes()[0].is_ascii_alphanumeric()
            && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
    };
    if let Some(bad) = repo.split('/').find(|c| !component_ok(c)) {
        return Err(format!(
            "repository component {bad:?} is not valid (lowercase letters, digits and . _ -, \
             starting and ending with a letter or digit)"
        ));
    }
    let mut out = format!("{domain}/{repo}");
    match (tag, digest) {
        (Some(t), _) => {
            out.push(':');
            out.push_str(t);
        }
        (None, None) => out.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(d) = digest {
        out.push('@');
        out.push_str(d);
    }
    if out.len() > 255 {
        return Err("longer than 255 characters".to_string());
    }
    Ok(out)
}

/// The short form people type and `docker images` shows: `debian:latest` for
/// `docker.io/library/debian:latest`, `ux/app:1` for `docker.io/ux/app:1`.
pub fn familiar(normalized: &str) -> &str {
    normalized
        .strip_prefix("docker.io/library/")
        .or_else(|| normalized.strip_prefix("docker.io/"))
        .unwrap_or(normalized)
}

/// An image source as skopeo spells it: `oci:DIR[:REF]`, `oci-archive:FILE[:REF]`,
/// `docker-archive:FILE[:REF]`, or a plain path (directory or tar, told apart by content).
/// `REF` picks an image in a source that holds several. `-` (standard input) is the caller's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    pub path: std::path::PathBuf,
    pub select: Option<String>,
    /// The transport's name, when one was given.
    pub kind: Option<&'static str>,
}

/// Parse `SRC` as a transport reference (see [`Transport`]).
pub fn transport(src: &str) -> Result<Transport, String> {
    for kind in ["oci", "oci-archive", "docker-archive"] {
        if let Some(rest) = src.strip_prefix(kind).and_then(|r| r.strip_prefix(':')) {
            // As skopeo: the path ends at the first ':' (a docker reference has its own).
            let (path, select) = match rest.split_once(':') {
                Some((p, r)) if !r.is_empty() => (p, Some(r.to_string())),
                Some((p, _)) => (p, None),
                None => (rest, None),
            };
            if path.is_empty() {
                return Err(format!("{kind}: needs a path ({kind}:PATH[:REF])"));
            }
            return Ok(Transport {
                path: path.into(),
                select,
                kind: Some(kind),
            });
        }
    }
    if let Some((t, _)) = src.split_once(':') {
        if !t.contains('/')
            && !t.is_empty()
            && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !std::path::Path::new(src).exists()
        {
            let pull = src
                .strip_prefix("docker://")
                .map(|r| format!(" (from a registry: strata image pull {r})"))
                .unwrap_or_default();
            return Err(format!(
                "transport {t:?} is not supported: use oci:DIR[:REF], oci-archive:FILE[:REF], \
                 docker-archive:FILE[:REF], a path, or - for standard input{pull}"
            ));
        }
    }
    Ok(Transport {
        path: src.into(),
        select: None,
        kind: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let n = |s: &str| normalize(s).unwrap();
        assert_eq!(n("debian"), "docker.io/library/debian:latest");
        assert_eq!(n("debian:bookworm"), "docker.io/library/debian:bookworm");
        assert_eq!(
            n("docker.io/library/debian:bookworm"),
            "docker.io/library/debian:bookworm"
        );
        assert_eq!(
            n("index.docker.io/library/debian"),
            "docker.io/library/debian:latest"
        );
        assert_eq!(n("ux/bookworm:latest"), "docker.io/ux/bookworm:latest");
        assert_eq!(n("ghcr.io/a/b/c:1.2"), "ghcr.io/a/b/c:1.2");
        assert_eq!(n("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(n("localhost/app:v1"), "localhost/app:v1");
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            n(&format!("busybox@{d}")),
            format!("docker.io/library/busybox@{d}")
        );
        let (deb, app) = (n("debian"), n("ux/app:1"));
        assert_eq!(familiar(&deb), "debian:latest");
        assert_eq!(familiar(&app), "ux/app:1");
        assert_eq!(familiar("ghcr.io/a:1"), "ghcr.io/a:1");
    }

    #[test]
    fn transports_as_skopeo_spells_them() {
        let t = |s: &str| transport(s).unwrap();
        assert_eq!(t("oci:/srv/img:v1").path, std::path::Path::new("/srv/img"));
        assert_eq!(t("oci:/srv/img:v1").select.as_deref(), Some("v1"));
        assert_eq!(t("oci:/srv/img").select, None);
        assert_eq!(t("oci-archive:a.tar").kind, Some("oci-archive"));
        let d = t("docker-archive:/x/s.tar:ux/app:1");
        assert_eq!(
            (d.path.to_str(), d.select.as_deref()),
            (Some("/x/s.tar"), Some("ux/app:1"))
        );
        assert_eq!(t("./plain.tar").kind, None);
        assert!(transport("docker://debian")
            .unwrap_err()
            .contains("strata image pull debian"));
        assert!(transport("oci:").is_err());
    }

    #[test]
    fn refuses_what_no_registry_accepts() {
        for bad in [
            "Debian",
            "a b",
            "debian:",
            "debian:-x",
            "x@sha256:12",
            "a//b",
            "",
            "-a",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
