//! The pool of ready VMs: for every snapshot named at start, `wanted` shells (VM, memory slot,
//! vCPU) whose RAM already holds the snapshot's pages, copied in (no page fault while a
//! request runs). A VM whose guest exited cleanly goes back into the pool after its reply,
//! returned to a fresh VM's state by `vm::recycle` (its vCPU and the host's mappings stay warm);
//! a refill thread replaces what was not given back. VMs out with a request count as the
//! pool's until they are back or known not to come back, so the refill never builds a VM that
//! a returning one would make surplus; and a request that finds the pool empty while a VM is
//! on its way back waits for it (briefly) rather than building one cold.
//!
//! Snapshots are keyed by file identity ([`FileId`]): a request reaches a pooled VM only if
//! the file it names is the very file the pool was made from.

use super::log::Log;
use super::targets::FileId;
use crate::launch::{self, LaunchError, Target};
use crate::report::Timeline;
use crate::vm::recycle::{RecycleRefused, Recycler};
use crate::vm::{Vm, VmShell};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A VM ready for a request.
pub(crate) struct ReadyVm {
    /// The VM.
    pub(crate) shell: VmShell,
    /// The requests it served before (0: a fresh VM).
    pub(crate) served: u32,
}

/// How long a request that finds its pool empty waits for a VM on its way back (a reset takes
/// well under a millisecond; building a VM cold takes about as long as this).
const RETURN_WAIT: Duration = Duration::from_millis(2);

/// The VMs of one pooled snapshot.
#[derive(Default)]
struct Queue {
    ready: VecDeque<ReadyVm>,
    /// Taken by requests and possibly coming back (their snapshot's VMs are reused).
    out: usize,
    /// Of those, the ones whose request is done and which are being reset now.
    returning: usize,
}

/// Ready VMs, per pooled snapshot.
pub(crate) struct Pool {
    ready: Mutex<BTreeMap<FileId, Queue>>,
    /// What reusing the VMs of a snapshot needs (none: its VMs are not reused).
    recyclers: BTreeMap<FileId, Recycler>,
    wanted: usize,
    /// Wakes the refill thread (a request is done).
    refill: Condvar,
    /// Wakes whoever waits for the pool to fill.
    filled: Condvar,
    /// The last attempt to create a VM failed.
    failing: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// An empty pool for these snapshots, `wanted` VMs each, reusing the VMs of the snapshots
    /// `recyclers` has.
    pub(crate) fn new(
        keys: impl Iterator<Item = FileId>,
        wanted: usize,
        recyclers: BTreeMap<FileId, Recycler>,
    ) -> Self {
        Self {
            ready: Mutex::new(keys.map(|k| (k, Queue::default())).collect()),
            recyclers,
            wanted,
            refill: Condvar::new(),
            filled: Condvar::new(),
            failing: AtomicBool::new(false),
        }
    }

    /// Lets the refill thread replace what requests took.
    pub(crate) fn request_done(&self) {
        self.refill.notify_all();
    }

    /// A ready VM for `key`: one in the pool, or one on its way back (waited for at most
    /// [`RETURN_WAIT`]); `None` if there is none. The refill waits for [`Pool::request_done`]:
    /// building a VM now would compete with the request for the CPU. A VM taken must be
    /// accounted for with [`Pool::give_back`].
    pub(crate) fn take(&self, key: &FileId) -> Option<ReadyVm> {
        let deadline = Instant::now() + RETURN_WAIT;
        let mut ready = lock(&self.ready);
        loop {
            let queue = ready.get_mut(key)?;
            if let Some(vm) = queue.ready.pop_front() {
                if self.reuses(key) {
                    queue.out += 1;
                }
                return Some(vm);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if queue.returning == 0 || left.is_zero() {
                return None;
            }
            ready = self
                .filled
                .wait_timeout(ready, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Whether the VMs of `key` are reused (their RAM must then be locked as it is populated).
    pub(crate) fn reuses(&self, key: &FileId) -> bool {
        self.recyclers.contains_key(key)
    }

    /// Puts a ready VM of `key` first in line (a reused one is the warmest: its vCPU and the
    /// host's mappings are in use already); if that makes the pool of `key` hold more than
    /// wanted (a VM built cold for a request, then reused), the last in line goes.
    pub(crate) fn put(&self, key: &FileId, vm: ReadyVm) {
        let surplus = {
            let mut ready = lock(&self.ready);
            let Some(queue) = ready.get_mut(key) else {
                return;
            };
            queue.ready.push_front(vm);
            let surplus = (queue.ready.len() + queue.out > self.wanted)
                .then(|| queue.ready.pop_back())
                .flatten();
            self.filled.notify_all();
            surplus
        };
        // Destroyed outside the lock.
        drop(surplus);
    }

    /// Says that a VM taken from the pool of `key` ([`Pool::take`]) will be given back once
    /// reset: called before its request is reported done, so that the next request waits for
    /// it rather than building a VM cold.
    pub(crate) fn expect_back(&self, key: &FileId) {
        if let Some(queue) = lock(&self.ready).get_mut(key) {
            queue.returning += 1;
        }
    }

    /// Accounts for a VM of snapshot `key` after its request: `taken` says whether it came
    /// from this pool, `returning` whether [`Pool::expect_back`] was called for it. With `vm`
    /// (its guest exited cleanly; it served its `served`-th request) and a recycler for
    /// `key`, it is returned to a fresh VM's state and put first in line; whatever is not
    /// kept is destroyed. `Err`: why it could not be reused.
    pub(crate) fn give_back(
        &self,
        key: &FileId,
        vm: Option<Vm>,
        served: u32,
        taken: bool,
        returning: bool,
    ) -> Result<(), RecycleRefused> {
        let recycled = match (vm, self.recyclers.get(key)) {
            (Some(vm), Some(recycler)) => Some(
                vm.recycle(recycler)
                    .map(|(shell, _)| shell)
                    .map_err(|refusal| refusal.why),
            ),
            _ => None,
        };
        if let Some(queue) = lock(&self.ready).get_mut(key) {
            if taken && self.reuses(key) {
                queue.out = queue.out.saturating_sub(1);
            }
            if returning {
                queue.returning = queue.returning.saturating_sub(1);
            }
        }
        self.filled.notify_all();
        match recycled {
            Some(Ok(shell)) => {
                self.put(key, ReadyVm { shell, served });
                Ok(())
            }
            Some(Err(why)) => Err(why),
            None => Ok(()),
        }
    }

    /// Waits until every snapshot has its VMs ready (or creating one failed), at most `limit`;
    /// returns the VMs ready.
    pub(crate) fn wait_until_full(&self, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        let mut ready = lock(&self.ready);
        loop {
            let count: usize = ready.values().map(|q| q.ready.len()).sum();
            let left = deadline.saturating_duration_since(Instant::now());
            let full = ready.values().all(|q| q.ready.len() >= self.wanted);
            if full || left.is_zero() || self.failing.load(Ordering::SeqCst) {
                return count;
            }
            ready = self
                .filled
                .wait_timeout(ready, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The refill thread's loop (never returns). A failure is logged once, when it starts.
    pub(crate) fn refill(
        &self,
        kvm: &Arc<kvm_ioctls::Kvm>,
        pooled: &[(FileId, Target)],
        log: &Log,
    ) {
        loop {
            let mut ready = lock(&self.ready);
            // VMs out with a request count: they come back, or are accounted for as gone.
            let short = pooled.iter().find(|(key, _)| {
                ready
                    .get(key)
                    .is_some_and(|q| q.ready.len() + q.out < self.wanted)
            });
            let Some((key, target)) = short else {
                drop(self.refill.wait(ready).unwrap_or_else(|e| e.into_inner()));
                continue;
            };
            drop(ready);
            let made = prepare_shell(kvm, target, self.reuses(key));
            let was_failing = self.failing.swap(made.is_err(), Ordering::SeqCst);
            if let (Err(err), false) = (&made, was_failing) {
                log.line(format!(
                    "serve: cannot create a ready VM of {} (retrying): {}",
                    target.path().display(),
                    crate::error_chain(err)
                ));
            }
            if let Ok(shell) = made {
                ready = lock(&self.ready);
                // A reused VM may have filled the place meanwhile: the new one then goes.
                let surplus = match ready.get_mut(key) {
                    Some(queue) if queue.ready.len() + queue.out < self.wanted => {
                        queue.ready.push_back(ReadyVm { shell, served: 0 });
                        None
                    }
                    _ => Some(shell),
                };
                self.filled.notify_all();
                drop(ready);
                drop(surplus);
            } else {
                self.filled.notify_all();
                // Creating VMs fails (out of memory or fds): try again later, never spin.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A shell whose RAM holds `target`'s pages, populated (a snapshot's, copied in now); its RAM
/// locked as it is populated when `reusable` (see `launch::reusable_shell`).
pub(crate) fn prepare_shell(
    kvm: &Arc<kvm_ioctls::Kvm>,
    target: &Target,
    reusable: bool,
) -> Result<VmShell, LaunchError> {
    if reusable {
        return launch::reusable_shell(kvm, target, target.mem_size(0), true);
    }
    let ram = launch::load_ram(target, target.mem_size(0), true)?;
    Ok(VmShell::create_with(
        Arc::clone(kvm),
        ram,
        &mut Timeline::default(),
    )?)
}
