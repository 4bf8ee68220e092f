//! vhost-user transport: pulls FUSE requests off the virtqueues the VMM shares with us and
//! hands them to fuse-backend-rs' `Server`, which decodes them (as untrusted input) and calls
//! the [`StrataFs`] dispatcher.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

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
}

/// The vhost-user-fs device backend of one VM.
pub struct FsBackend {
    server: Arc<Server<Arc<StrataFs>>>,
    mem: RwLock<Option<Mem>>,
    event_idx: AtomicBool,
    pub stats: Arc<Stats>,
}

impl FsBackend {
    pub fn new(fs: Arc<StrataFs>) -> FsBackend {
        FsBackend {
            server: Arc::new(Server::new(fs)),
            mem: RwLock::new(None),
            event_idx: AtomicBool::new(false),
            stats: Arc::new(Stats::default()),
        }
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
        for chain in chains {
            let head = chain.head_index();
            let reply_len = serve_chain(&self.server, &mem, chain, &self.stats);
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
}

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
            tracing::warn!(
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
        // session ends; without one, dropping the daemon would wait forever.
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
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
        if self.event_idx.load(Ordering::Relaxed) {
            // Drain, re-enable notifications, and drain again if the guest queued meanwhile.
            loop {
                vring.disable_notification().map_err(io::Error::other)?;
                self.process_queue(vring)?;
                if !vring.enable_notification().map_err(io::Error::other)? {
                    break;
                }
            }
        } else {
            self.process_queue(vring)?;
        }
        Ok(())
    }
}
