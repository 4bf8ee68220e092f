//! The task service containerd talks to over ttrpc: one container (one micro-VM) per task.
//!
//! Lifecycle: Create starts the sandbox with its VMM paused and a thread waiting for its end;
//! Start lets it run; Kill forwards the signal (SIGKILL stops the VM); the waiter records the
//! exit and publishes `/tasks/exit`; Delete stops the session and reaps the VMM; Shutdown ends
//! the shim once no task is left. Exec, pause, checkpoint and update are refused clearly.
//! The VM itself is behind [`Backend`]/[`Vm`] ([`crate::sandbox`] is the real one), so the
//! lifecycle is tested here on plain processes.

use std::collections::HashMap;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use containerd_shim::{
    api, event::Event, publisher::RemotePublisher, ExitSignal, TtrpcContext, TtrpcResult,
};
use containerd_shim_protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskStart};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim::oci::Options;
#[cfg(test)]
use containerd_shim_protos::ttrpc;
use containerd_shim_protos::ttrpc::context::Context;
use containerd_shim_protos::types::task::ProcessInfo;

use crate::error::ShimError;
use crate::rootfs::MountSpec;

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The container's process exited with this code.
    Code(u32),
    /// The container's process was killed by this signal.
    Signal(i32),
    /// The VM ended without a container exit status (VMM killed or crashed, guest failed).
    Failed(String),
}

impl VmExit {
    /// The status containerd reports: the code, 128 + signal, 125 for a failed VM (as
    /// `strata run` and `docker run` report their own failures).
    pub fn status(&self) -> u32 {
        match self {
            VmExit::Code(c) => *c,
            VmExit::Signal(s) => 128 + *s as u32,
            VmExit::Failed(_) => 125,
        }
    }
}

/// What Create hands the backend.
#[derive(Debug, Clone)]
pub struct CreateParams {
    /// Task (container) id.
    pub id: String,
    /// containerd's namespace.
    pub namespace: String,
    /// The bundle dir (config.json).
    pub bundle: String,
    /// The request's rootfs mounts.
    pub rootfs: Vec<MountSpec>,
    /// stdio FIFO paths ("" = none).
    pub stdin: String,
    /// stdout FIFO path.
    pub stdout: String,
    /// stderr FIFO path ("" with a terminal: its output is all on stdout).
    pub stderr: String,
    /// Whether the process has a terminal (`ctr run -t`).
    pub terminal: bool,
}

/// Makes sandboxes.
pub trait Backend: Send + Sync {
    /// Prepares the container: rootfs, spec, stdio, VMM spawned but not running the container
    /// yet. On error nothing is left behind.
    fn create(&self, p: &CreateParams) -> Result<Arc<dyn Vm>, ShimError>;
}

/// One running sandbox. All methods may be called from any thread, concurrently with
/// [`Vm::wait`].
pub trait Vm: Send + Sync {
    /// The pid containerd shows for the task (the VMM's).
    fn pid(&self) -> u32;
    /// Lets the container run.
    fn start(&self) -> Result<(), ShimError>;
    /// The client closed stdin (CloseIO): the container gets EOF.
    fn close_stdin(&self);
    /// Forwards a signal to the container; SIGKILL stops the VM.
    fn signal(&self, sig: i32) -> Result<(), ShimError>;
    /// The client's terminal is now `rows` x `cols` (ResizePty): so is the container's.
    fn resize(&self, rows: u16, cols: u16) -> Result<(), ShimError>;
    /// Blocks until the container ended (called once, by the waiter thread).
    fn wait(&self) -> VmExit;
    /// Stops the session, reaps the VMM, removes what create made. Idempotent.
    fn destroy(&self);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    Stopped,
}

struct TaskState {
    phase: Phase,
    exit: Option<(VmExit, Timestamp)>,
}

struct TaskEntry {
    params: CreateParams,
    vm: Arc<dyn Vm>,
    state: Mutex<TaskState>,
    exited: Condvar,
}

impl TaskEntry {
    fn lock(&self) -> MutexGuard<'_, TaskState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_exit(&self) -> (VmExit, Timestamp) {
        let mut st = self.lock();
        loop {
            if let Some(e) = &st.exit {
                return e.clone();
            }
            st = self.exited.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

struct Inner {
    namespace: String,
    backend: Box<dyn Backend>,
    exit: Arc<ExitSignal>,
    events: Mutex<Sender<(String, Box<dyn Event + Send>)>>,
    tasks: Mutex<HashMap<String, Arc<TaskEntry>>>,
}

/// The ttrpc Task service.
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

fn now() -> Timestamp {
    Timestamp::now()
}

impl TaskService {
    /// A service publishing its events through `publisher` (None: events are only logged).
    pub fn new(
        namespace: &str,
        backend: Box<dyn Backend>,
        exit: Arc<ExitSignal>,
        publisher: Option<RemotePublisher>,
    ) -> TaskService {
        let (tx, rx) = mpsc::channel::<(String, Box<dyn Event + Send>)>();
        let ns = namespace.to_string();
        // One thread publishes in order (create before start before exit), so a slow
        // containerd never blocks a request.
        std::thread::spawn(move || {
            for (topic, ev) in rx {
                let Some(p) = &publisher else {
                    log::debug!("event {topic}");
                    continue;
                };
                if let Err(e) = p.publish(Context::default(), &topic, &ns, ev) {
                    log::warn!("publish {topic}: {e}");
                }
            }
        });
        TaskService {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                backend,
                exit,
                events: Mutex::new(tx),
                tasks: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn publish(&self, ev: impl Event + Send + 'static) {
        let topic = ev.topic();
        let tx = self.inner.events.lock().unwrap_or_else(|e| e.into_inner());
        if tx.send((topic, Box::new(ev))).is_err() {
            log::warn!("event publisher is gone");
        }
    }

    fn tasks(&self) -> MutexGuard<'_, HashMap<String, Arc<TaskEntry>>> {
        self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, id: &str, exec_id: &str) -> Result<Arc<TaskEntry>, ShimError> {
        if !exec_id.is_empty() {
            return Err(ShimError::NotFound(format!("{id} exec {exec_id}")));
        }
        self.tasks()
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(id.to_string()))
    }

    /// ResizePty, without the ttrpc wrapping.
    pub fn do_resize(&self, req: &api::ResizePtyRequest) -> Result<(), ShimError> {
        let t = self.get(&req.id, &req.exec_id)?;
        // A size beyond a terminal's u16 cells is clamped.
        let cell = |n: u32| u16::try_from(n).unwrap_or(u16::MAX);
        t.vm.resize(cell(req.height), cell(req.width))
    }

    /// Create, without the ttrpc wrapping.
    pub fn do_create(&self, req: &api::CreateTaskRequest) -> Result<u32, ShimError> {
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(ShimError::Unsupported("restoring a checkpoint".into()));
        }
        // ctr and CRI may send runc's options type: nothing in it applies to a VM, but a request
        // for another runtime binary would be silently wrong.
        if let Some(Ok(Some(o))) = req.options.as_ref().map(|a| a.unpack::<Options>()) {
            if !o.binary_name.is_empty() {
                return Err(ShimError::Unsupported(format!(
                    "runtime option BinaryName {:?}",
                    o.binary_name
                )));
            }
        }
        if self.tasks().contains_key(&req.id) {
            return Err(ShimError::Exists(req.id.clone()));
        }
        let params = CreateParams {
            id: req.id.clone(),
            namespace: self.inner.namespace.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.iter().map(MountSpec::from).collect(),
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let vm = self.inner.backend.create(&params)?;
        let pid = vm.pid();
        let entry = Arc::new(TaskEntry {
            params,
            vm: vm.clone(),
            state: Mutex::new(TaskState {
                phase: Phase::Created,
                exit: None,
            }),
            exited: Condvar::new(),
        });
        self.tasks().insert(req.id.clone(), entry.clone());
        self.publish(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(containerd_shim_protos::events::task::TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid,
            ..Default::default()
        });
        let svc = self.clone();
        std::thread::spawn(move || {
            let exit = vm.wait();
            let at = now();
            if let VmExit::Failed(why) = &exit {
                log::error!("task {}: {why}", entry.params.id);
            }
            {
                let mut st = entry.lock();
                st.phase = Phase::Stopped;
                st.exit = Some((exit.clone(), at.clone()));
            }
            entry.exited.notify_all();
            svc.publish(TaskExit {
                container_id: entry.params.id.clone(),
                id: entry.params.id.clone(),
                pid,
                exit_status: exit.status(),
                exited_at: MessageField::some(at),
                ..Default::default()
            });
        });
        Ok(pid)
    }

    fn do_start(&self, req: &api::StartRequest) -> Result<u32, ShimError> {
        let t = self.get(&req.id, &req.exec_id)?;
        {
            let mut st = t.lock();
            if st.phase != Phase::Created {
                let what = match &st.exit {
                    Some((VmExit::Failed(why), _)) => format!("the VM failed before start: {why}"),
                    _ => format!("cannot start a task that is {:?}", st.phase).to_lowercase(),
                };
                return Err(ShimError::State {
                    id: req.id.clone(),
                    what,
                });
            }
            t.vm.start()?;
            st.phase = Phase::Running;
        }
        let pid = t.vm.pid();
        self.publish(TaskStart {
            container_id: req.id.clone(),
            pid,
            ..Default::default()
        });
        Ok(pid)
    }

    fn do_wait(&self, req: &api::WaitRequest) -> Result<api::WaitResponse, ShimError> {
        let t = self.get(&req.id, &req.exec_id)?;
        let (exit, at) = t.wait_exit();
        Ok(api::WaitResponse {
            exit_status: exit.status(),
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    fn do_kill(&self, req: &api::KillRequest) -> Result<(), ShimError> {
        let t = self.get(&req.id, &req.exec_id)?;
        if t.lock().exit.is_some() {
            return Err(ShimError::NotFound(format!(
                "{}: process already finished",
                req.id
            )));
        }
        let sig = i32::try_from(req.signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| ShimError::State {
                id: req.id.clone(),
                what: format!("invalid signal {}", req.signal),
            })?;
        t.vm.signal(sig)
    }

    fn do_delete(&self, req: &api::DeleteRequest) -> Result<api::DeleteResponse, ShimError> {
        let t = self.get(&req.id, &req.exec_id)?;
        let phase = t.lock().phase;
        match phase {
            Phase::Running => {
                return Err(ShimError::State {
                    id: req.id.clone(),
                    what: "cannot delete a running task: kill it first".into(),
                })
            }
            Phase::Created => {
                // Never started: stop the paused VM.
                t.vm.signal(libc::SIGKILL)?;
            }
            Phase::Stopped => {}
        }
        let (exit, at) = t.wait_exit();
        t.vm.destroy();
        self.tasks().remove(&req.id);
        let pid = t.vm.pid();
        self.publish(TaskDelete {
            container_id: req.id.clone(),
            id: req.id.clone(),
            pid,
            exit_status: exit.status(),
            exited_at: MessageField::some(at.clone()),
            ..Default::default()
        });
        Ok(api::DeleteResponse {
            pid,
            exit_status: exit.status(),
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    fn do_state(&self, req: &api::StateRequest) -> Result<api::StateResponse, ShimError> {
        let t = self.get(&req.id, &req.exec_id)?;
        let st = t.lock();
        let status = match st.phase {
            Phase::Created => api::Status::CREATED,
            Phase::Running => api::Status::RUNNING,
            Phase::Stopped => api::Status::STOPPED,
        };
        let mut resp = api::StateResponse {
            id: req.id.clone(),
            bundle: t.params.bundle.clone(),
            pid: t.vm.pid(),
            status: status.into(),
            stdin: t.params.stdin.clone(),
            stdout: t.params.stdout.clone(),
            stderr: t.params.stderr.clone(),
            terminal: t.params.terminal,
            ..Default::default()
        };
        if let Some((exit, at)) = &st.exit {
            resp.exit_status = exit.status();
            resp.exited_at = MessageField::some(at.clone());
        }
        Ok(resp)
    }

    /// Stops every task (the shim is going away).
    pub fn destroy_all(&self) {
        let all: Vec<_> = self.tasks().drain().map(|(_, t)| t).collect();
        for t in all {
            if t.lock().exit.is_none() {
                let _ = t.vm.signal(libc::SIGKILL);
            }
            t.vm.destroy();
        }
    }
}

fn reply<T>(what: &str, r: Result<T, ShimError>) -> TtrpcResult<T> {
    r.map_err(|e| {
        log::warn!("{what}: {e}");
        e.into()
    })
}

impl containerd_shim::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        log::info!("create {} (bundle {})", req.id, req.bundle);
        let pid = reply("create", self.do_create(&req))?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = reply("start", self.do_start(&req))?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        reply("wait", self.do_wait(&req))
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        log::info!("kill {} signal {}", req.id, req.signal);
        reply("kill", self.do_kill(&req))?;
        Ok(api::Empty::default())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        log::info!("delete {}", req.id);
        reply("delete", self.do_delete(&req))
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        reply("state", self.do_state(&req))
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let t = reply("pids", self.get(&req.id, ""))?;
        Ok(api::PidsResponse {
            processes: vec![ProcessInfo {
                pid: t.vm.pid(),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.tasks().get(&req.id).map(|t| t.vm.pid()).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if !req.now && !self.tasks().is_empty() {
            return Ok(api::Empty::default());
        }
        log::info!("shutdown");
        self.destroy_all();
        self.inner.exit.signal();
        Ok(api::Empty::default())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let t = reply("close_io", self.get(&req.id, &req.exec_id))?;
        if req.stdin {
            t.vm.close_stdin();
        }
        Ok(api::Empty::default())
    }

    fn exec(&self, _ctx: &TtrpcContext, _req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        reply("exec", Err(ShimError::Unsupported("exec".into())))
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        reply(
            "resize_pty",
            self.do_resize(&req).map(|()| api::Empty::new()),
        )
    }

    fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        reply("pause", Err(ShimError::Unsupported("pause".into())))
    }

    fn resume(&self, _ctx: &TtrpcContext, _req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        reply("resume", Err(ShimError::Unsupported("resume".into())))
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        reply(
            "checkpoint",
            Err(ShimError::Unsupported("checkpoint".into())),
        )
    }

    fn update(&self, _ctx: &TtrpcContext, _req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        reply("update", Err(ShimError::Unsupported("update".into())))
    }
}

#[cfg(test)]
mod tests {
    //! The lifecycle on plain processes (`sh -c`) instead of VMs: the VM tests (`shim` module)
    //! run it for real under containerd.

    use super::*;
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::Pid;

    struct ProcBackend;

    struct ProcVm {
        cmd: String,
        pid: Mutex<Option<u32>>,
        killed: Mutex<bool>,
        changed: Condvar,
        destroyed: Mutex<bool>,
    }

    /// Every resize a [`ProcVm`] got: (its command, rows, cols).
    static RESIZED: Mutex<Vec<(String, u16, u16)>> = Mutex::new(Vec::new());

    impl Backend for ProcBackend {
        fn create(&self, p: &CreateParams) -> Result<Arc<dyn Vm>, ShimError> {
            if p.bundle == "bad" {
                return Err(ShimError::Rootfs("bad bundle".into()));
            }
            Ok(Arc::new(ProcVm {
                cmd: p.bundle.clone(),
                pid: Mutex::new(None),
                killed: Mutex::new(false),
                changed: Condvar::new(),
                destroyed: Mutex::new(false),
            }))
        }
    }

    impl Vm for ProcVm {
        fn pid(&self) -> u32 {
            self.pid.lock().unwrap().unwrap_or(1)
        }
        fn close_stdin(&self) {}
        fn start(&self) -> Result<(), ShimError> {
            let child = std::process::Command::new("sh")
                .args(["-c", &self.cmd])
                .spawn()
                .map_err(|e| ShimError::Sandbox(e.to_string()))?;
            *self.pid.lock().unwrap() = Some(child.id());
            self.changed.notify_all();
            Ok(())
        }
        fn signal(&self, sig: i32) -> Result<(), ShimError> {
            match *self.pid.lock().unwrap() {
                Some(pid) => kill(
                    Pid::from_raw(pid as i32),
                    Signal::try_from(sig).map_err(|e| ShimError::Sandbox(e.to_string()))?,
                )
                .map_err(|e| ShimError::Sandbox(e.to_string())),
                None => {
                    *self.killed.lock().unwrap() = true;
                    self.changed.notify_all();
                    Ok(())
                }
            }
        }
        fn resize(&self, rows: u16, cols: u16) -> Result<(), ShimError> {
            RESIZED.lock().unwrap().push((self.cmd.clone(), rows, cols));
            Ok(())
        }
        fn wait(&self) -> VmExit {
            let pid = {
                let mut p = self.pid.lock().unwrap();
                loop {
                    if let Some(pid) = *p {
                        break pid;
                    }
                    if *self.killed.lock().unwrap() {
                        return VmExit::Failed("killed before start".into());
                    }
                    p = self.changed.wait(p).unwrap();
                }
            };
            match waitpid(Pid::from_raw(pid as i32), None) {
                Ok(WaitStatus::Exited(_, c)) => VmExit::Code(c as u32),
                Ok(WaitStatus::Signaled(_, s, _)) => VmExit::Signal(s as i32),
                other => VmExit::Failed(format!("{other:?}")),
            }
        }
        fn destroy(&self) {
            *self.destroyed.lock().unwrap() = true;
        }
    }

    fn service() -> TaskService {
        TaskService::new(
            "test",
            Box::new(ProcBackend),
            Arc::new(ExitSignal::default()),
            None,
        )
    }

    fn create(s: &TaskService, id: &str, cmd: &str) -> Result<u32, ShimError> {
        s.do_create(&api::CreateTaskRequest {
            id: id.into(),
            bundle: cmd.into(),
            ..Default::default()
        })
    }

    fn start(s: &TaskService, id: &str) -> Result<u32, ShimError> {
        s.do_start(&api::StartRequest {
            id: id.into(),
            ..Default::default()
        })
    }

    fn wait(s: &TaskService, id: &str) -> u32 {
        s.do_wait(&api::WaitRequest {
            id: id.into(),
            ..Default::default()
        })
        .unwrap()
        .exit_status
    }

    fn status(s: &TaskService, id: &str) -> api::Status {
        s.do_state(&api::StateRequest {
            id: id.into(),
            ..Default::default()
        })
        .unwrap()
        .status
        .enum_value_or_default()
    }

    fn delete(s: &TaskService, id: &str) -> Result<api::DeleteResponse, ShimError> {
        s.do_delete(&api::DeleteRequest {
            id: id.into(),
            ..Default::default()
        })
    }

    fn kill_req(id: &str, sig: u32) -> api::KillRequest {
        api::KillRequest {
            id: id.into(),
            signal: sig,
            ..Default::default()
        }
    }

    #[test]
    fn create_start_wait_delete() {
        let s = service();
        create(&s, "t1", "exit 3").unwrap();
        assert_eq!(status(&s, "t1"), api::Status::CREATED);
        assert!(matches!(
            create(&s, "t1", "true"),
            Err(ShimError::Exists(_))
        ));
        start(&s, "t1").unwrap();
        assert!(matches!(start(&s, "t1"), Err(ShimError::State { .. })));
        assert_eq!(wait(&s, "t1"), 3);
        assert_eq!(status(&s, "t1"), api::Status::STOPPED);
        assert!(matches!(
            s.do_kill(&kill_req("t1", 15)),
            Err(ShimError::NotFound(_))
        ));
        let d = delete(&s, "t1").unwrap();
        assert_eq!(d.exit_status, 3);
        assert!(matches!(delete(&s, "t1"), Err(ShimError::NotFound(_))));
        assert!(s.tasks().is_empty());
    }

    #[test]
    fn resize_reaches_the_vm() {
        let s = service();
        create(&s, "resize-me", "true").unwrap();
        s.do_resize(&api::ResizePtyRequest {
            id: "resize-me".into(),
            width: 132,
            height: 50,
            ..Default::default()
        })
        .unwrap();
        assert!(RESIZED.lock().unwrap().contains(&("true".into(), 50, 132)));
        assert!(matches!(
            s.do_resize(&api::ResizePtyRequest {
                id: "nope".into(),
                ..Default::default()
            }),
            Err(ShimError::NotFound(_))
        ));
    }

    #[test]
    fn kill_forwards_the_signal() {
        let s = service();
        create(&s, "t1", "exec sleep 30").unwrap();
        start(&s, "t1").unwrap();
        assert!(matches!(delete(&s, "t1"), Err(ShimError::State { .. })));
        assert!(s.do_kill(&kill_req("t1", 0)).is_err());
        s.do_kill(&kill_req("t1", 15)).unwrap();
        assert_eq!(wait(&s, "t1"), 128 + 15);
        assert_eq!(delete(&s, "t1").unwrap().exit_status, 143);
    }

    #[test]
    fn delete_of_a_created_task_stops_it() {
        let s = service();
        create(&s, "t1", "exit 0").unwrap();
        let d = delete(&s, "t1").unwrap();
        assert_eq!(d.exit_status, 125);
        assert!(s.tasks().is_empty());
    }

    #[test]
    fn refusals() {
        let s = service();
        let e = create(&s, "t1", "bad").unwrap_err();
        assert!(e.to_string().contains("bad bundle"), "{e}");
        assert!(s.tasks().is_empty());
        let e = s
            .do_create(&api::CreateTaskRequest {
                id: "t2".into(),
                checkpoint: "/ckpt".into(),
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.to_string().contains("checkpoint"), "{e}");
        let status: ttrpc::Error = e.into();
        assert!(
            format!("{status:?}").contains("UNIMPLEMENTED"),
            "{status:?}"
        );
        assert!(matches!(start(&s, "nope"), Err(ShimError::NotFound(_))));
    }
}
