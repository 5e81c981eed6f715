//! The pool of ready VMs: for every snapshot named at start, `wanted` shells (VM, memory slot,
//! vCPU) whose RAM already holds the snapshot's pages, copied in (no page fault while a
//! request runs). A VM whose guest exited cleanly goes back into the pool after its reply,
//! returned to a fresh VM's state by `vm::recycle` (its vCPU and the host's mappings stay warm);
//! a refill thread replaces what was not given back.
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

/// Ready VMs, per pooled snapshot.
pub(crate) struct Pool {
    ready: Mutex<BTreeMap<FileId, VecDeque<ReadyVm>>>,
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
            ready: Mutex::new(keys.map(|k| (k, VecDeque::new())).collect()),
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

    /// A ready VM for `key`, if one is there. The refill waits for [`Pool::request_done`]:
    /// building a VM now would compete with the request for the CPU.
    pub(crate) fn take(&self, key: &FileId) -> Option<ReadyVm> {
        lock(&self.ready).get_mut(key)?.pop_front()
    }

    /// Whether the VMs of `key` are reused (their RAM must then be locked as it is populated).
    pub(crate) fn reuses(&self, key: &FileId) -> bool {
        self.recyclers.contains_key(key)
    }

    /// Puts a ready VM of `key` first in line (a reused one is the warmest: its vCPU and the
    /// host's mappings are in use already); if that makes the pool of `key` hold more than
    /// wanted, the last in line goes (and is destroyed). `false` if `key` is not pooled.
    pub(crate) fn put(&self, key: &FileId, vm: ReadyVm) -> bool {
        let surplus = {
            let mut ready = lock(&self.ready);
            let Some(queue) = ready.get_mut(key) else {
                return false;
            };
            queue.push_front(vm);
            let surplus = (queue.len() > self.wanted).then(|| queue.pop_back());
            self.filled.notify_all();
            surplus
        };
        // Destroyed outside the lock.
        drop(surplus);
        true
    }

    /// Returns `vm`, which served its `served`-th request of snapshot `key` and whose guest
    /// exited cleanly, to a fresh VM's state and puts it first in the pool. `Ok(false)`: not
    /// kept (its snapshot's VMs are not reused); `Err`: why it could not be reused. Whatever
    /// is not kept is destroyed.
    pub(crate) fn recycle(
        &self,
        key: &FileId,
        vm: Vm,
        served: u32,
    ) -> Result<bool, RecycleRefused> {
        let Some(recycler) = self.recyclers.get(key) else {
            return Ok(false);
        };
        let (shell, _) = vm.recycle(recycler).map_err(|refusal| refusal.why)?;
        Ok(self.put(key, ReadyVm { shell, served }))
    }

    /// Waits until every snapshot has its VMs ready (or creating one failed), at most `limit`;
    /// returns the VMs ready.
    pub(crate) fn wait_until_full(&self, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        let mut ready = lock(&self.ready);
        loop {
            let count: usize = ready.values().map(VecDeque::len).sum();
            let left = deadline.saturating_duration_since(Instant::now());
            let full = ready.values().all(|q| q.len() >= self.wanted);
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
            let short = pooled
                .iter()
                .find(|(key, _)| ready.get(key).is_some_and(|q| q.len() < self.wanted));
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
                    Some(queue) if queue.len() < self.wanted => {
                        queue.push_back(ReadyVm { shell, served: 0 });
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
