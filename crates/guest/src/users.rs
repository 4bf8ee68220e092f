//! Docker's `USER` resolution against the container's own `/etc/passwd` and `/etc/group`
//! (read inside the guest, never on the host).
//!
//! - `name` or `uid`: uid, primary gid and home from passwd (a uid not listed: gid 0, home `/`);
//!   supplementary groups: every group in `/etc/group` listing the user name as a member.
//! - `user:group`: the group by name or number instead of the primary one.

use strata_plan::container::User;

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The home directory from passwd, if the user is listed.
    pub home: Option<String>,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || l.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// (name, gid, members)
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || l.starts_with('#') {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolve `user` with the given passwd and group file contents (empty if absent).
pub fn resolve(user: &User, passwd: &str, group: &str) -> Result<Resolved, String> {
    let spec = match user {
        User::Id {
            uid,
            gid,
            additional_gids,
        } => {
            let home = passwd_entries(passwd)
                .find(|e| e.uid == *uid)
                .map(|e| e.home.to_string());
            return Ok(Resolved {
                uid: *uid,
                gid: *gid,
                groups: additional_gids.clone(),
                home,
            });
        }
        User::Name(s) => s,
    };
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec.as_str(), None),
    };
    let entry = match u.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.name == u)
                .ok_or_else(|| {
                    format!("unable to find user {u}: no matching entries in /etc/passwd")
                })?,
        ),
    };
    let uid = match &entry {
        Some(e) => e.uid,
        None => u.parse::<u32>().map_err(|_| format!("bad user {u:?}"))?,
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(n, _, _)| *n == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in /etc/group")
                })?,
        },
        None => entry.as_ref().map_or(0, |e| e.gid),
    };
    let mut groups = Vec::new();
    if g.is_none() {
        if let Some(e) = &entry {
            for (_, gid, members) in group_entries(group) {
                if members.contains(&e.name) && gid != e.gid && !groups.contains(&gid) {
                    groups.push(gid);
                }
            }
        }
    }
    Ok(Resolved {
        uid,
        gid,
        groups,
        home: entry.map(|e| e.home.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        # comment\n\
        app:x:1000:100:App:/home/app:/bin/sh\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str =
        "root:x:0:\nusers:x:100:\nwheel:x:10:app,root\naudio:x:29:app\nnogroup:x:65534:\n";

    fn name(s: &str) -> Result<Resolved, String> {
        resolve(&User::Name(s.into()), PASSWD, GROUP)
    }

    #[test]
    fn names_numbers_and_groups() {
        assert_eq!(
            name("app").unwrap(),
            Resolved {
                uid: 1000,
                gid: 100,
                groups: vec![10, 29],
                home: Some("/home/app".into())
            }
        );
        assert_eq!(name("1000").unwrap().home.as_deref(), Some("/home/app"));
        let r = name("nobody:nogroup").unwrap();
        assert_eq!((r.uid, r.gid, r.groups.len()), (65534, 65534, 0));
        let r = name("4242:7").unwrap();
        assert_eq!((r.uid, r.gid, r.home), (4242, 7, None));
        let r = name("4242").unwrap();
        assert_eq!((r.uid, r.gid), (4242, 0));
        assert!(name("ghost")
            .unwrap_err()
            .contains("unable to find user ghost"));
        assert!(name("app:ghosts")
            .unwrap_err()
            .contains("unable to find group"));
        let ids = User::Id {
            uid: 0,
            gid: 0,
            additional_gids: vec![1],
        };
        let r = resolve(&ids, PASSWD, GROUP).unwrap();
        assert_eq!((r.groups, r.home.as_deref()), (vec![1], Some("/root")));
        // No passwd at all (a scratch image): numeric users still work.
        assert_eq!(resolve(&User::Name("0".into()), "", "").unwrap().uid, 0);
    }
}
