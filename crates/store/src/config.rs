//! The part of an image's OCI config a container runtime needs, kept in the image record at
//! import: Entrypoint, Cmd, Env, User, WorkingDir, platform, labels, StopSignal.
//!
//! Images imported by an older strata have none (the record's `config` is absent): callers say
//! so and fall back to defaults rather than failing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The runtime part of an image config (OCI image spec `config`, plus the platform).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct ImageConfig {
    /// `amd64`, `arm64`, …
    #[serde(default)]
    pub architecture: String,
    /// `linux`.
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Docker's `USER`: `user`, `user:group`, `uid`, `uid:gid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

impl ImageConfig {
    /// Take what a runtime needs from a parsed OCI image config.
    pub fn from_oci(c: &oci_spec::image::ImageConfiguration) -> ImageConfig {
        let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        let mut out = ImageConfig {
            architecture: c.architecture().to_string(),
            os: c.os().to_string(),
            ..ImageConfig::default()
        };
        if let Some(cfg) = c.config() {
            out.entrypoint = cfg.entrypoint().clone();
            out.cmd = cfg.cmd().clone();
            out.env = cfg.env().clone().unwrap_or_default();
            out.user = nonempty(cfg.user());
            out.working_dir = nonempty(cfg.working_dir());
            out.labels = cfg
                .labels()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect();
            out.stop_signal = nonempty(cfg.stop_signal());
        }
        out
    }

    /// Human-readable lines for `strata image inspect` (`Entrypoint: [...]`, …).
    pub fn describe(&self) -> Vec<String> {
        let list = |v: &Option<Vec<String>>| match v {
            Some(v) => format!("{v:?}"),
            None => "(none)".into(),
        };
        let mut out = vec![
            format!("platform: {}/{}", self.os, self.architecture),
            format!("entrypoint: {}", list(&self.entrypoint)),
            format!("cmd: {}", list(&self.cmd)),
            format!("user: {}", self.user.as_deref().unwrap_or("(none: root)")),
            format!(
                "working dir: {}",
                self.working_dir.as_deref().unwrap_or("(none: /)")
            ),
        ];
        if self.env.is_empty() {
            out.push("env: (none)".into());
        }
        for e in &self.env {
            out.push(format!("env: {e}"));
        }
        for (k, v) in &self.labels {
            out.push(format!("label: {k}={v}"));
        }
        if let Some(s) = &self.stop_signal {
            out.push(format!("stop signal: {s}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_runtime_fields() {
        let json = r#"{
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"],
                       "Env": ["PATH=/bin", "A=1"], "User": "nobody", "WorkingDir": "/srv",
                       "Labels": {"b": "2", "a": "1"}, "StopSignal": "SIGQUIT"},
            "rootfs": {"type": "layers", "diff_ids": []}
        }"#;
        let c = oci_spec::image::ImageConfiguration::from_reader(json.as_bytes()).unwrap();
        let ic = ImageConfig::from_oci(&c);
        assert_eq!(
            ic.entrypoint.as_deref(),
            Some(&["/bin/sh".into(), "-c".into()][..])
        );
        assert_eq!(ic.cmd.as_deref(), Some(&["echo hi".to_string()][..]));
        assert_eq!(ic.env, ["PATH=/bin", "A=1"]);
        assert_eq!(ic.user.as_deref(), Some("nobody"));
        assert_eq!(ic.working_dir.as_deref(), Some("/srv"));
        assert_eq!(ic.labels.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(
            (ic.os.as_str(), ic.architecture.as_str()),
            ("linux", "amd64")
        );
        let back: ImageConfig = serde_json::from_str(&serde_json::to_string(&ic).unwrap()).unwrap();
        assert_eq!(back, ic);
        let d = ic.describe().join("\n");
        assert!(d.contains("entrypoint: [\"/bin/sh\", \"-c\"]"), "{d}");
        assert!(d.contains("env: A=1"), "{d}");

        let bare =
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = oci_spec::image::ImageConfiguration::from_reader(bare.as_bytes()).unwrap();
        let ic = ImageConfig::from_oci(&c);
        assert_eq!(ic.cmd, None);
        assert!(ic.describe().join("\n").contains("user: (none: root)"));
    }
}
