//! A [`ContainerSpec`] from an image's config and what the user asked for, with Docker's
//! rules: the command replaces `Cmd` (the `Entrypoint` stays), `-e` entries override the
//! image's `Env`, `-w` its `WorkingDir`, `-u` its `User`.

use strata_plan::container::{ContainerSpec, User, DEFAULT_PATH};
use strata_store::ImageConfig;

use crate::error::{Result, RuntimeError};

/// What the user overrides (`strata run` flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Replaces the image's `Entrypoint` (`--entrypoint`; an empty list clears it).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's `Cmd` (the arguments after the image name), if not empty.
    pub cmd: Vec<String>,
    /// `KEY=VALUE` (set) or `KEY` (taken from `host_env`, unset if absent there), applied
    /// after the image's `Env`.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// `user`, `user:group`, `uid`, `uid:gid`.
    pub user: Option<String>,
    /// Hostname (default: none set).
    pub hostname: Option<String>,
    /// Extra tmpfs mounts (`--tmpfs /run`).
    pub tmpfs: Vec<String>,
}

/// The spec to run: `image` may be `None` (an image imported before strata kept configs: its
/// Entrypoint/Cmd/Env/User/WorkingDir are unknown, so the command must be given).
/// `host_env` resolves `-e KEY` without a value.
pub fn container_spec(
    image: Option<&ImageConfig>,
    o: &Overrides,
    host_env: impl Fn(&str) -> Option<String>,
) -> Result<ContainerSpec> {
    let default = ImageConfig::default();
    let img = image.unwrap_or(&default);
    let entrypoint = o
        .entrypoint
        .clone()
        .or_else(|| img.entrypoint.clone())
        .unwrap_or_default();
    let cmd = if o.cmd.is_empty() && o.entrypoint.is_none() {
        img.cmd.clone().unwrap_or_default()
    } else {
        o.cmd.clone()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(RuntimeError::Invalid(if image.is_none() {
            "no command given, and the image's config is not in the store (it was imported \
             by an older strata: import it again), so its Entrypoint and Cmd are unknown"
                .into()
        } else {
            "no command given and the image has no Entrypoint or Cmd: give one after `--`".into()
        }));
    }
    let mut spec = ContainerSpec::new(args);
    spec.env = img.env.clone();
    if spec.env_get("PATH").is_none() {
        spec.env_set("PATH", DEFAULT_PATH);
    }
    for e in &o.env {
        match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => spec.env_set(k, v),
            Some(_) => {
                return Err(RuntimeError::Invalid(format!(
                    "environment entry {e:?} has no name: use KEY=VALUE"
                )))
            }
            None => match host_env(e) {
                Some(v) => spec.env_set(e, &v),
                None => spec
                    .env
                    .retain(|x| x.split_once('=').map_or(x != e, |(k, _)| k != e)),
            },
        }
    }
    if let Some(cwd) = o.cwd.clone().or_else(|| img.working_dir.clone()) {
        spec.cwd = cwd;
    }
    if let Some(u) = o.user.clone().or_else(|| img.user.clone()) {
        spec.user = User::Name(u);
    }
    spec.hostname = o.hostname.clone();
    for t in &o.tmpfs {
        spec.mounts.push(strata_plan::container::tmpfs(t));
    }
    spec.validate()?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> ImageConfig {
        ImageConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["serve".into(), "--port=1".into()]),
            env: vec!["PATH=/usr/bin:/bin".into(), "A=1".into()],
            user: Some("app".into()),
            working_dir: Some("/srv".into()),
            ..ImageConfig::default()
        }
    }

    fn none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn image_config_applies() {
        let s = container_spec(Some(&img()), &Overrides::default(), none).unwrap();
        assert_eq!(s.args, ["/entry", "serve", "--port=1"]);
        assert_eq!(s.env, ["PATH=/usr/bin:/bin", "A=1"]);
        assert_eq!(s.cwd, "/srv");
        assert_eq!(s.user, User::Name("app".into()));
    }

    #[test]
    fn overrides_win_like_docker() {
        let o = Overrides {
            cmd: vec!["sh".into()],
            env: vec![
                "A=2".into(),
                "B=3".into(),
                "FROM_HOST".into(),
                "GONE".into(),
            ],
            cwd: Some("/tmp".into()),
            user: Some("0:0".into()),
            hostname: Some("box".into()),
            tmpfs: vec!["/run".into()],
            ..Overrides::default()
        };
        let host = |k: &str| (k == "FROM_HOST").then(|| "h".to_string());
        let s = container_spec(Some(&img()), &o, host).unwrap();
        assert_eq!(s.args, ["/entry", "sh"]);
        assert_eq!(s.env, ["PATH=/usr/bin:/bin", "A=2", "B=3", "FROM_HOST=h"]);
        assert_eq!(s.cwd, "/tmp");
        assert_eq!(s.user, User::Name("0:0".into()));
        assert_eq!(s.hostname.as_deref(), Some("box"));
        assert_eq!(s.mounts.last().unwrap().destination, "/run");
        let o = Overrides {
            entrypoint: Some(vec![]),
            cmd: vec!["id".into()],
            ..Overrides::default()
        };
        assert_eq!(container_spec(Some(&img()), &o, none).unwrap().args, ["id"]);
    }

    #[test]
    fn defaults_and_refusals() {
        let o = Overrides {
            cmd: vec!["true".into()],
            ..Overrides::default()
        };
        let s = container_spec(None, &o, none).unwrap();
        assert_eq!(s.env, [format!("PATH={DEFAULT_PATH}")]);
        assert_eq!(s.cwd, "/");
        assert_eq!(s.user, User::default());
        let e = container_spec(None, &Overrides::default(), none).unwrap_err();
        assert!(e.to_string().contains("import it again"), "{e}");
        let e =
            container_spec(Some(&ImageConfig::default()), &Overrides::default(), none).unwrap_err();
        assert!(e.to_string().contains("no Entrypoint or Cmd"), "{e}");
        let o = Overrides {
            cmd: vec!["true".into()],
            env: vec!["=x".into()],
            ..Overrides::default()
        };
        assert!(container_spec(None, &o, none).is_err());
        let o = Overrides {
            cmd: vec!["true".into()],
            cwd: Some("relative".into()),
            ..Overrides::default()
        };
        assert!(matches!(
            container_spec(None, &o, none),
            Err(RuntimeError::Spec(_))
        ));
    }
}
