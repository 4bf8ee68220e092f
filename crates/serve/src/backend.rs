//! vhost-user transport: pulls FUSE requests off the virtqueues the VMM shares with us and
//! hands them to fuse-backend-rs' `Server`, which decodes them (as untrusted input) and calls
//! the [`StrataFs`] dispatcher.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant};

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringMutex, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::tree::StrataFs;

/// One high-priority queue plus one request queue (qemu's `vhost-user-fs-pci` default).
pub const NUM_QUEUES: usize = 2;
/// Largest virtqueue the guest may set up.
pub const QUEUE_SIZE: usize = 1024;

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// Counters a person (or a test) can read after the session.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub bad_chains: AtomicU64,
    /// Requests answered empty because the session was revoked (stopped while connected, or
    /// after a panic in its request path).
    pub refused: AtomicU64,
}

/// The served tree and the FUSE server over it.
#[derive(Clone)]
struct Served {
    server: Arc<Server<Arc<StrataFs>>>,
    fs: Arc<StrataFs>,
}

/// The vhost-user-fs device backend of one VM.
pub struct FsBackend {
    /// `None` once revoked: the tree (and every host fd it holds) is gone, and requests are
    /// completed empty (the guest sees EIO) until the VMM hangs up.
    served: RwLock<Option<Served>>,
    mem: RwLock<Option<Mem>>,
    event_idx: AtomicBool,
    /// Per queue: how long to poll for the guest's next request before sleeping.
    polls: [Poll; NUM_QUEUES],
    pub stats: Arc<Stats>,
    /// The exit-event fds vhost-user-backend 0.21 registers in its epoll and never closes
    /// (`VringEpollHandler::new` calls `into_raw_fd`): ours to close once the daemon is dropped.
    leaked: Arc<LeakedFds>,
    /// Testing knob (`Supervisor::inject_panic`, `fault-injection` feature only): panic in the
    /// request path, to prove a crashing session leaves the others alone.
    #[cfg(feature = "fault-injection")]
    panic_on_request: AtomicBool,
}

impl FsBackend {
    /// Decide the session's plan now (see [`StrataFs::plan_bytes`]), while the guest boots.
    pub fn warm_plan(&self) {
        // Not under the lock: deciding the plan may walk every layer (seconds on a large one),
        // and a stop (revoke, which takes the lock for writing, while `strata daemon` holds
        // its sessions lock) must not wait for that walk.
        let fs = self
            .served
            .read()
            .ok()
            .and_then(|g| g.as_ref().map(|s| s.fs.clone()));
        if let Some(fs) = fs {
            fs.plan_bytes();
        }
    }

    pub fn new(fs: Arc<StrataFs>) -> FsBackend {
        FsBackend {
            served: RwLock::new(Some(Served {
                server: Arc::new(Server::new(fs.clone())),
                fs,
            })),
            mem: RwLock::new(None),
            event_idx: AtomicBool::new(false),
            polls: Default::default(),
            stats: Arc::new(Stats::default()),
            leaked: Arc::new(LeakedFds::default()),
            #[cfg(feature = "fault-injection")]
            panic_on_request: AtomicBool::new(false),
        }
    }

    /// Drop the served tree now: every host fd it holds is closed as soon as no request is
    /// in flight, and every later request is completed empty. Used when a connected session
    /// is stopped and after a panic in its request path.
    pub fn revoke(&self) {
        let taken = match self.served.write() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        if taken.is_some() {
            tracing::info!("session revoked: served tree dropped, later requests refused");
        }
    }

    /// Whether [`FsBackend::revoke`] has run.
    pub fn revoked(&self) -> bool {
        self.served.read().map(|g| g.is_none()).unwrap_or(true)
    }

    /// Host inodes and open handles the guest holds (0, 0 once revoked).
    pub fn held(&self) -> (usize, usize) {
        match self.served.read().ok().and_then(|g| g.clone()) {
            Some(s) => (s.fs.live_nodes(), s.fs.open_handles()),
            None => (0, 0),
        }
    }

    /// The fds to close once the vhost-user daemon built on this backend is dropped.
    pub fn leaked_fds(&self) -> Arc<LeakedFds> {
        self.leaked.clone()
    }

    /// Fault injection for tests: panic in the request path on the next request.
    #[cfg(feature = "fault-injection")]
    pub fn panic_on_next_request(&self) {
        self.panic_on_request.store(true, Ordering::Relaxed);
    }

    /// Serve every request waiting on `vring`. A malformed request is answered with an error
    /// by the FUSE server or, if it cannot even be parsed, completed empty: never a panic and
    /// never a stalled queue.
    fn process_queue(&self, vring: &VringMutex) -> io::Result<()> {
        let Some(mem) = self
            .mem
            .read()
            .map_err(|_| io::Error::other("poisoned"))?
            .clone()
        else {
            return Ok(()); // no memory table yet: nothing can be queued
        };
        let mem = mem.memory();
        let mut chains = Vec::new();
        {
            let mut state = vring.get_mut();
            while let Some(c) = state.get_queue_mut().pop_descriptor_chain(mem.clone()) {
                chains.push(c);
            }
        }
        if chains.is_empty() {
            return Ok(());
        }
        let server = self
            .served
            .read()
            .ok()
            .and_then(|g| g.as_ref().map(|s| s.server.clone()));
        for chain in chains {
            let head = chain.head_index();
            let served = match &server {
                Some(server) if !self.revoked() => catch_unwind(AssertUnwindSafe(|| {
                    #[cfg(feature = "fault-injection")]
                    if self.panic_on_request.swap(false, Ordering::Relaxed) {
                        panic!("fault injection: a panic in the request path");
                    }
                    serve_chain(server, &mem, chain, &self.stats)
                })),
                _ => Ok(0),
            };
            // A panic ends this session only: the tree is dropped, this request and every
            // later one are completed empty (the guest sees EIO), nothing is left hanging.
            let reply_len = served.unwrap_or_else(|_| {
                tracing::error!("panic while serving a request: session revoked");
                self.revoke();
                0
            });
            if reply_len == 0 && self.revoked() {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
            }
            if let Err(e) = vring.add_used(head, reply_len) {
                tracing::warn!("cannot complete request {head}: {e}");
            }
        }
        let notify =
            !self.event_idx.load(Ordering::Relaxed) || vring.needs_notification().unwrap_or(true);
        if notify {
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    /// Poll for up to `window` (notifications still off) until the guest queues another
    /// request: `true` if it did. Each turn yields the CPU (`sched_yield`): alone on a core
    /// this is a spin, but a runnable vCPU or qemu thread on the same core runs first.
    fn wait_avail(&self, vring: &VringMutex, window: Duration) -> bool {
        let Some(mem) = self.mem.read().ok().and_then(|m| m.clone()) else {
            return false;
        };
        let mem = mem.memory();
        let t0 = Instant::now();
        loop {
            {
                let st = vring.get_ref();
                let q = st.get_queue();
                match q.avail_idx(&*mem, Ordering::Acquire) {
                    Ok(i) if i.0 != q.next_avail() => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
            if t0.elapsed() >= window {
                return false;
            }
            std::thread::yield_now();
        }
    }
}

/// Adaptive polling of one queue, as KVM's halt polling does for a vCPU: after serving, the
/// worker spins for up to a window before it sleeps in epoll, so a guest that answers a reply
/// with its next request right away (a create is 5-8 requests in a row) is served without a
/// sleep, a wake-up and a kick.
///
/// What decides is the *gap*, counted as KVM counts a halt: from the moment the worker ran
/// out of requests (polling included) to the guest's next kick. After a sleep, a gap within
/// the maximum (`STRATA_SERVE_POLL_US`) means a longer window would have caught it: the
/// window doubles (from 10 µs). A gap beyond the maximum means polling could not have
/// helped: the window halves (to 0 below 10 µs). An idle guest costs nothing, and a guest
/// whose every round trip takes longer than the maximum stops the polling.
///
/// The poll yields the CPU on every turn ([`FsBackend::wait_avail`]). On a 2-core host
/// running a TCG guest (vCPU threads and qemu's main loop want both cores), a pure spin made
/// each FUSE round trip slower than no polling at all (182 µs vs 147 µs, `statfs` workload
/// of `strata bench guest`); yielding made it faster (129 µs).
#[derive(Default)]
struct Poll {
    /// Current window, µs.
    window_us: AtomicU64,
    /// When the worker last ran out of requests, µs since [`EPOCH`], if it then slept
    /// (0: awake, or the last poll caught the next request).
    idle_since_us: AtomicU64,
}

/// The most a worker polls, µs: `STRATA_SERVE_POLL_US`, 0 never polls. 150 by default: it
/// takes 9-13 % off creates through the guest overlay in `strata bench guest --vary
/// STRATA_SERVE_POLL_US=0` (docs/benchmarks.md#polling-before-sleeping), on a host where one
/// FUSE round trip takes 130-180 µs; a fixed spin of 50 µs did not help.
static POLL_MAX_US: LazyLock<u64> = LazyLock::new(|| {
    std::env::var("STRATA_SERVE_POLL_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
});

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

impl Poll {
    const START_US: u64 = 10;

    fn now_us() -> u64 {
        EPOCH.elapsed().as_micros() as u64 + 1
    }

    /// The guest kicked the queue: adjust the window by the gap since the worker ran out of
    /// requests.
    fn woken(&self) {
        self.adjust(*POLL_MAX_US, Self::now_us());
    }

    /// Adjust the window to the gap ending at `now_us`, for a maximum of `max` µs.
    fn adjust(&self, max: u64, now_us: u64) {
        let idle_since = self.idle_since_us.swap(0, Ordering::Relaxed);
        if max == 0 || idle_since == 0 {
            return;
        }
        let gap = now_us.saturating_sub(idle_since);
        let w = self.window_us.load(Ordering::Relaxed);
        let w = if gap <= max {
            (w * 2).clamp(Self::START_US, max)
        } else if w / 2 < Self::START_US {
            0
        } else {
            w / 2
        };
        self.window_us.store(w, Ordering::Relaxed);
    }

    /// The worker ran out of requests at `idle_since_us` (polled since, if it had a window)
    /// and now goes to sleep.
    fn sleeping(&self, idle_since_us: u64) {
        if *POLL_MAX_US > 0 {
            self.idle_since_us.store(idle_since_us, Ordering::Relaxed);
        }
    }

    fn window(&self) -> Option<Duration> {
        match self.window_us.load(Ordering::Relaxed) {
            0 => None,
            w => Some(Duration::from_micros(w)),
        }
    }
}

/// Malformed descriptor chains, over all sessions: a guest can send one per request.
static BAD_CHAIN_LOG: crate::ratelog::RateLog =
    crate::ratelog::RateLog::new(5, std::time::Duration::from_secs(10));

/// The guest memory one request lives in, as the vhost-user library hands it out.
pub type MemGuard = GuestMemoryLoadGuard<GuestMemoryMmap>;

/// Serve one descriptor chain: decode the FUSE request in its readable part (untrusted input),
/// write the reply into its writable part, and return the reply length for the used ring.
///
/// The one request path of the daemon; the request fuzzer ([`crate::fuzzing`]) drives it too.
pub fn serve_chain(
    server: &Server<Arc<StrataFs>>,
    mem: &MemGuard,
    chain: DescriptorChain<MemGuard>,
    stats: &Stats,
) -> u32 {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let reply_len = match (
        Reader::from_descriptor_chain(&**mem, chain.clone()),
        VirtioFsWriter::new(&**mem, chain),
    ) {
        (Ok(r), Ok(w)) => match server.handle_message(r, Writer::VirtioFs(w), None, None) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("request failed: {e}");
                0
            }
        },
        (r, w) => {
            stats.bad_chains.fetch_add(1, Ordering::Relaxed);
            crate::ratelog_warn!(
                BAD_CHAIN_LOG,
                "malformed descriptor chain from the guest (reader: {:?}, writer: {:?})",
                r.err(),
                w.err()
            );
            0
        }
    };
    // A reply never exceeds the chain's writable bytes, which are far below 4 GiB.
    u32::try_from(reply_len).unwrap_or(0)
}

impl VhostUserBackend for FsBackend {
    type Bitmap = ();
    type Vring = VringMutex;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // With an exit event the library can stop and join its worker threads when the
        // session ends; without one, dropping the daemon would wait forever. The library
        // leaks the consumer end: remember it, to close it once the daemon is gone.
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()?;
        self.leaked.remember(consumer.as_raw_fd());
        Some((consumer, notifier))
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn update_memory(&self, mem: Mem) -> io::Result<()> {
        *self.mem.write().map_err(|_| io::Error::other("poisoned"))? = Some(mem);
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringMutex],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        let Some(vring) = vrings.get(device_event as usize) else {
            return Err(io::Error::other(format!(
                "event for unknown queue {device_event}"
            )));
        };
        // A panic ends this session only: the other sessions of a multi-VM daemon never
        // notice (requests are caught one by one in `process_queue`; this is the backstop).
        let served = catch_unwind(AssertUnwindSafe(|| -> io::Result<()> {
            if self.event_idx.load(Ordering::Relaxed) {
                // Drain, re-enable notifications, and drain again if the guest queued
                // meanwhile.
                let poll = self.polls.get(device_event as usize);
                if let Some(p) = poll {
                    p.woken();
                }
                loop {
                    vring.disable_notification().map_err(io::Error::other)?;
                    self.process_queue(vring)?;
                    let idle_since = Poll::now_us();
                    if poll.is_some_and(|p| p.window().is_some_and(|w| self.wait_avail(vring, w))) {
                        continue;
                    }
                    if let Some(p) = poll {
                        p.sleeping(idle_since);
                    }
                    if !vring.enable_notification().map_err(io::Error::other)? {
                        break;
                    }
                }
            } else {
                self.process_queue(vring)?;
            }
            Ok(())
        }));
        match served {
            Ok(r) => r,
            Err(_) => {
                // Outside a request (ring bookkeeping): keep the worker, refuse from now on.
                tracing::error!("panic in the virtqueue worker: session revoked");
                self.revoke();
                Ok(())
            }
        }
    }
}

/// File descriptors vhost-user-backend 0.21 leaks (see [`FsBackend::leaked_fds`]), closed by
/// [`LeakedFds::close`] once nothing can use them any more.
#[derive(Debug, Default)]
pub struct LeakedFds(Mutex<Vec<RawFd>>);

impl LeakedFds {
    fn remember(&self, fd: RawFd) {
        if let Ok(mut v) = self.0.lock() {
            v.push(fd);
        }
    }

    /// Close them. Call only after the `VhostUserDaemon` of this backend has been dropped
    /// (its worker threads joined, its epoll fds closed): until then the library uses them.
    pub fn close(&self) {
        let fds = match self.0.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(_) => return,
        };
        for fd in fds {
            if let Err(e) = crate::sys::close_leaked_eventfd(fd) {
                tracing::warn!("cannot close leaked exit eventfd {fd}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 150;

    /// The next request came `us` µs after the worker ran out of requests (and slept).
    fn slept(p: &Poll, us: u64) {
        p.idle_since_us.store(1_000, Ordering::Relaxed);
        p.adjust(MAX, 1_000 + us);
    }

    #[test]
    fn the_poll_window_grows_on_quick_requests_and_shrinks_to_zero_when_idle() {
        let max = MAX;
        let p = Poll::default();
        assert_eq!(p.window(), None, "no polling before the first sleep");
        slept(&p, 1);
        assert_eq!(p.window(), Some(Duration::from_micros(Poll::START_US)));
        for _ in 0..20 {
            slept(&p, 1);
        }
        assert_eq!(
            p.window(),
            Some(Duration::from_micros(max)),
            "capped at the maximum"
        );
        slept(&p, max * 100);
        assert_eq!(p.window(), Some(Duration::from_micros(max / 2)));
        for _ in 0..20 {
            slept(&p, 1_000_000);
        }
        assert_eq!(p.window(), None, "an idle queue stops polling");
    }

    #[test]
    fn a_guest_slower_than_the_maximum_turns_polling_off() {
        let p = Poll::default();
        for _ in 0..20 {
            slept(&p, 1);
        }
        assert_eq!(p.window(), Some(Duration::from_micros(MAX)));
        // Every request comes a little after a full window of spinning: polling never
        // catches one, so it must stop rather than burn the window every time.
        for _ in 0..10 {
            slept(&p, MAX + 20);
        }
        assert_eq!(p.window(), None);
    }
}
