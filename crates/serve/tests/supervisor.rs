//! The multi-VM daemon, in process (no confinement, so the test process stays usable): start
//! sessions over the API, connect vhost-user frontends, serve FUSE requests, stop, crash one
//! session and see the others keep serving, and no fd or thread left behind.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_serve::api::{Client, Dirs, ErrorKind, LayerDevice, Request, Response, SessionState};
use strata_serve::frontend::TestVm;
use strata_serve::supervisor::{DaemonConfig, Supervisor};
use strata_serve::CachePolicy;

struct Fixture {
    dir: tempfile::TempDir,
    sup: Arc<Supervisor>,
    api: PathBuf,
}

/// The tests count the process's fds: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    for d in ["l0/etc", "l1/bin", "run"] {
        std::fs::create_dir_all(p.join(d)).unwrap();
    }
    std::fs::write(p.join("l0/etc/hello"), b"hello from l0\n").unwrap();
    let api = p.join("run/api.sock");
    let sup = Supervisor::new(
        DaemonConfig {
            api: api.clone(),
            socket_dir: p.join("run"),
            allow: vec![p.to_owned()],
            read_only: vec![],
            read_write: vec![],
            cache: CachePolicy::default(),
            limits: strata_serve::Limits::default(),
            confine: false,
            socket_mode: strata_serve::socket::DEFAULT_SOCKET_MODE,
            socket_gid: None,
            api_uids: vec![],
            allow_no_landlock: false,
        },
        Box::new(|id| Err((ErrorKind::NotFound, format!("no store rootfs {id}")))),
    )
    .unwrap();
    let listener = UnixListener::bind(&api).unwrap();
    let s = sup.clone();
    std::thread::spawn(move || s.accept_loop(listener));
    Fixture { dir, sup, api }
}

impl Fixture {
    fn p(&self) -> &Path {
        self.dir.path()
    }

    fn dirs(&self, id: &str) -> Dirs {
        let c = self.p().join("c").join(id);
        std::fs::create_dir_all(c.join("upper")).unwrap();
        std::fs::create_dir_all(c.join("work")).unwrap();
        Dirs {
            lowers: vec![self.p().join("l0"), self.p().join("l1")],
            upper: c.join("upper"),
            work: c.join("work"),
        }
    }

    fn start(&self, client: &mut Client, id: &str) -> Response {
        client
            .call(&Request::Start {
                id: id.into(),
                socket: self.p().join("run").join(format!("{id}.sock")),
                dirs: Some(self.dirs(id)),
                tag: None,
                layer_device: None,
                lower_block: None,
                union: false,
            })
            .unwrap()
    }
}

fn state(client: &mut Client, id: &str) -> Option<SessionState> {
    match client
        .call(&Request::Status {
            id: Some(id.into()),
        })
        .unwrap()
    {
        Response::Status { sessions } => sessions.first().map(|s| s.state),
        _ => None,
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn wait_for_fds(baseline: usize) {
    let t = Instant::now();
    while open_fds() > baseline {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "fds left open: {} > {baseline}: {:?}",
            open_fds(),
            fd_list()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn fd_list() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .map(|e| {
            format!(
                "{}={}",
                e.file_name().to_string_lossy(),
                std::fs::read_link(e.path())
                    .map(|l| l.display().to_string())
                    .unwrap_or_default()
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn sessions_start_serve_stop_and_crash_alone() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let f = fixture();
    let mut c = Client::connect(&f.api).unwrap();
    // After one answer, so the daemon's side of this connection is counted too.
    assert!(state(&mut c, "none").is_none());
    let fds0 = open_fds();

    // Start three; the socket exists once the answer arrives.
    for id in ["a", "b", "c"] {
        match f.start(&mut c, id) {
            Response::Started { session } => {
                assert_eq!(session.state, SessionState::Listening);
                assert_eq!(session.layers, 2);
                assert!(session.socket.exists());
            }
            r => panic!("start {id}: {r:?}"),
        }
    }
    // Refusals name the problem.
    match f.start(&mut c, "a") {
        Response::Error { kind, .. } => assert_eq!(kind, ErrorKind::Exists),
        r => panic!("{r:?}"),
    }
    let r = c
        .call(&Request::Start {
            id: "x".into(),
            socket: f.p().join("elsewhere.sock"),
            dirs: Some(f.dirs("x")),
            tag: None,
            layer_device: None,
            lower_block: None,
            union: false,
        })
        .unwrap();
    assert!(
        matches!(
            r,
            Response::Error {
                kind: ErrorKind::BadRequest,
                ..
            }
        ),
        "{r:?}"
    );
    let r = c
        .call(&Request::Start {
            id: "y".into(),
            socket: f.p().join("run/y.sock"),
            dirs: Some(Dirs {
                lowers: vec!["/etc".into()],
                ..f.dirs("y")
            }),
            tag: None,
            layer_device: None,
            lower_block: None,
            union: false,
        })
        .unwrap();
    assert!(
        matches!(
            r,
            Response::Error {
                kind: ErrorKind::BadRequest,
                ..
            }
        ),
        "{r:?}"
    );
    let r = c.call(&Request::Start {
        id: "../z".into(),
        socket: f.p().join("run/z.sock"),
        dirs: None,
        tag: None,
        layer_device: None,
        lower_block: None,
        union: false,
    });
    assert!(matches!(
        r,
        Ok(Response::Error {
            kind: ErrorKind::BadRequest,
            ..
        })
    ));

    // Two VMMs connect and read through their own trees.
    let mut vm_a = TestVm::connect(&f.p().join("run/a.sock")).unwrap();
    let mut vm_b = TestVm::connect(&f.p().join("run/b.sock")).unwrap();
    wait_for("a connected", || {
        state(&mut c, "a") == Some(SessionState::Connected)
    });
    assert_eq!(
        vm_a.read_file("layers/0/etc/hello").unwrap(),
        b"hello from l0\n"
    );
    // b has two layers: its plan gives them as the one merged lower, and both stay readable.
    let plan = vm_b.read_file("plan.json").unwrap();
    assert!(String::from_utf8_lossy(&plan).contains("\"lower\""));
    assert!(vm_b.walk("layers/1").is_ok());
    // A write in a's upper is a's alone.
    let upper = vm_a.walk("upper").unwrap();
    let (e, fh) = vm_a.create(upper.node, "note", 0o644).unwrap();
    assert_eq!(vm_a.write(e.node, fh, 0, b"mine").unwrap(), 4);
    vm_a.fsync(e.node, fh).unwrap();
    vm_a.release(e.node, fh, false).unwrap();
    assert_eq!(
        std::fs::read(f.p().join("c/a/upper/note")).unwrap(),
        b"mine"
    );
    // Not in b's upper: a negative entry (node 0), which the guest sees as ENOENT.
    assert!(vm_b.walk("upper/note").map_or(true, |e| e.node == 0));

    // Stop a connected session: its guest gets errors, b is untouched.
    match c.call(&Request::Stop { id: "a".into() }).unwrap() {
        Response::Stopped { session } => assert_eq!(session.state, SessionState::Stopping),
        r => panic!("{r:?}"),
    }
    assert!(!f.p().join("run/a.sock").exists());
    assert!(vm_a.read_file("plan.json").is_err());
    assert!(vm_b.read_file("plan.json").is_ok());
    drop(vm_a);
    wait_for("a gone", || state(&mut c, "a").is_none());

    // A session whose request path panics ends alone; b keeps serving.
    let mut vm_d = {
        assert!(matches!(f.start(&mut c, "d"), Response::Started { .. }));
        TestVm::connect(&f.p().join("run/d.sock")).unwrap()
    };
    assert!(vm_d.read_file("plan.json").is_ok());
    assert!(f.sup.inject_panic("d"));
    assert!(vm_d.read_file("plan.json").is_err());
    wait_for("d stopping", || {
        state(&mut c, "d") == Some(SessionState::Stopping)
    });
    assert!(vm_b.read_file("layers/0/etc/hello").is_ok());
    drop(vm_d);
    wait_for("d gone", || state(&mut c, "d").is_none());

    // Stop a session nobody connected to: gone at once, socket removed.
    match c.call(&Request::Stop { id: "c".into() }).unwrap() {
        Response::Stopped { session } => assert_eq!(session.state, SessionState::Ended),
        r => panic!("{r:?}"),
    }
    assert!(!f.p().join("run/c.sock").exists());

    // A VMM that hangs up ends its session and gives everything back.
    drop(vm_b);
    wait_for("b gone", || f.sup.is_empty());
    wait_for_fds(fds0);
    assert!(!f.p().join("run/b.sock").exists());
}

#[test]
fn many_sessions_fit_and_leave_nothing_behind() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let f = fixture();
    let mut c = Client::connect(&f.api).unwrap();
    // After one answer, so the daemon's side of this connection is counted too.
    assert!(state(&mut c, "none").is_none());
    let fds0 = open_fds();
    let n = 20;
    let mut vms = Vec::new();
    for i in 0..n {
        let id = format!("s{i}");
        assert!(matches!(f.start(&mut c, &id), Response::Started { .. }));
        let mut vm = TestVm::connect(&f.p().join(format!("run/{id}.sock"))).unwrap();
        assert!(vm.read_file("layers/0/etc/hello").is_ok());
        vms.push(vm);
    }
    assert_eq!(f.sup.len(), n);
    vms.clear();
    wait_for("all sessions over", || f.sup.is_empty());
    std::thread::sleep(Duration::from_millis(500));
    wait_for_fds(fds0);
}

#[test]
fn a_session_with_a_layer_device_serves_both_and_stops_both() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let f = fixture();
    let mut c = Client::connect(&f.api).unwrap();
    // After one answer, the daemon's side of this API connection is open too.
    c.call(&Request::Status { id: None }).unwrap();
    let baseline = open_fds();
    let sock = f.p().join("run/ld.sock");
    let layers = f.p().join("run/ld.layers.sock");
    let start = |c: &mut Client, layer_socket: &Path| {
        c.call(&Request::Start {
            id: "ld".into(),
            socket: sock.clone(),
            dirs: Some(f.dirs("ld")),
            tag: None,
            layer_device: Some(LayerDevice {
                socket: layer_socket.to_owned(),
                tag: None,
            }),
            lower_block: None,
            union: false,
        })
        .unwrap()
    };
    // The layer device needs a socket of its own, in the socket directory.
    for bad in [sock.clone(), f.p().join("elsewhere.sock")] {
        match start(&mut c, &bad) {
            Response::Error { kind, .. } => assert_eq!(kind, ErrorKind::BadRequest),
            other => panic!("{other:?}"),
        }
    }
    match start(&mut c, &layers) {
        Response::Started { session } => {
            assert_eq!(session.layer_device.as_deref(), Some(layers.as_path()))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.sup.len(), 1, "the layer device is part of the session");
    match c.call(&Request::Status { id: None }).unwrap() {
        Response::Status { sessions } => assert_eq!(sessions.len(), 1),
        other => panic!("{other:?}"),
    }

    let mut tree = TestVm::connect(&sock).unwrap();
    let plan = strata_plan::MountPlan::from_json(&tree.read_file("plan.json").unwrap()).unwrap();
    assert_eq!(plan.lower_tag.as_deref(), Some("strata-lower"));
    let mut lv = TestVm::connect(&layers).unwrap();
    assert_eq!(lv.read_file("lower/etc/hello").unwrap(), b"hello from l0\n");
    assert!(lv.walk("upper").is_err() && lv.walk("plan.json").is_err());
    // GETXATTR (opcode 22): ENOSYS on the layer device, so the guest kernel stops asking.
    let hello = lv.walk("lower/etc/hello").unwrap().node;
    let mut body = 0u64.to_le_bytes().to_vec();
    body.extend_from_slice(b"trusted.overlay.metacopy\0");
    let e = lv.call(22, hello, &body).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSYS));
    let hello = tree.walk("lower/etc/hello").unwrap().node;
    let e = tree.call(22, hello, &body).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENODATA));

    match c.call(&Request::Stop { id: "ld".into() }).unwrap() {
        Response::Stopped { .. } => {}
        other => panic!("{other:?}"),
    }
    assert!(
        !sock.exists() && !layers.exists(),
        "both sockets go at stop"
    );
    drop(tree);
    drop(lv);
    wait_for("the session and its layer device to end", || {
        f.sup.is_empty()
    });
    // Every fd of both devices closed (trees, sockets, vhost-user threads' eventfds).
    wait_for_fds(baseline);
}

/// A start with `lower_block` (the EROFS layer device, `rootfs start --erofs`): the session's
/// plan sends the guest to that block device; a bad serial, or both a layer device and a
/// block device, are refused.
#[test]
fn a_session_can_send_its_guest_to_a_block_device_for_the_layers() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let f = fixture();
    let mut c = Client::connect(&f.api).unwrap();
    let start = |c: &mut Client, id: &str, block: &str, device: bool| {
        c.call(&Request::Start {
            id: id.into(),
            socket: f.p().join(format!("run/{id}.sock")),
            dirs: Some(f.dirs(id)),
            tag: None,
            layer_device: device.then(|| LayerDevice {
                socket: f.p().join(format!("run/{id}.layers.sock")),
                tag: None,
            }),
            lower_block: Some(strata_plan::LowerBlock::erofs(block)),
            union: false,
        })
        .unwrap()
    };
    for (id, serial, device, says) in [
        ("b1", "", false, "empty"),
        ("b2", "a-serial-longer-than-20", false, "20 bytes"),
        ("b3", "strata-lower", true, "alternatives"),
    ] {
        match start(&mut c, id, serial, device) {
            Response::Error {
                kind: ErrorKind::BadRequest,
                message,
            } => assert!(message.contains(says), "{id}: {message}"),
            r => panic!("{id}: {r:?}"),
        }
        assert!(!f.p().join(format!("run/{id}.sock")).exists());
    }
    assert!(matches!(
        start(&mut c, "blk", "strata-lower", false),
        Response::Started { .. }
    ));
    let mut vm = TestVm::connect(&f.p().join("run/blk.sock")).unwrap();
    let plan = strata_plan::MountPlan::from_json(&vm.read_file("plan.json").unwrap()).unwrap();
    assert_eq!(
        plan.lower_block,
        Some(strata_plan::LowerBlock::erofs("strata-lower"))
    );
    drop(vm);
    wait_for("the session to end", || f.sup.is_empty());
}

#[test]
fn a_session_with_event_idx_answers_every_request_across_ring_wraps() {
    // qemu negotiates VIRTIO_RING_F_EVENT_IDX: the daemon then polls between requests with
    // kicks suppressed and signals only the completions the driver asked for. 1000 requests
    // go round the 64-entry ring many times; each must come back right, none may hang.
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let f = fixture();
    let mut c = Client::connect(&f.api).unwrap();
    assert!(matches!(f.start(&mut c, "ei"), Response::Started { .. }));
    let mut vm = TestVm::connect_event_idx(&f.p().join("run/ei.sock")).unwrap();
    for i in 0..1000 {
        assert_eq!(
            vm.read_file("layers/0/etc/hello").unwrap(),
            b"hello from l0\n",
            "request round {i}"
        );
        if i % 100 == 0 {
            // An idle gap: the poll window runs out and the daemon must ask for kicks again.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert!(vm.kicks_sent > 0);
    drop(vm);
    wait_for("the session to end", || f.sup.is_empty());
}
