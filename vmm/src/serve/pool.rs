//! The pool of ready VMs: for every snapshot named at start, `wanted` shells (VM, memory slot,
//! vCPU) whose RAM already holds the snapshot's pages, copied in (no page fault while a
//! request runs). A refill thread replaces what requests took, after their replies.

use crate::launch::{self, LaunchError, Target};
use crate::report::Timeline;
use crate::sandbox::{self, Profile};
use crate::vm::VmShell;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Ready VMs, per pooled snapshot.
pub(crate) struct Pool {
    ready: Mutex<BTreeMap<PathBuf, VecDeque<VmShell>>>,
    wanted: usize,
    refill: Condvar,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// An empty pool for these snapshots (keyed by canonical path), `wanted` VMs each.
    pub(crate) fn new(keys: impl Iterator<Item = PathBuf>, wanted: usize) -> Self {
        Self {
            ready: Mutex::new(keys.map(|k| (k, VecDeque::new())).collect()),
            wanted,
            refill: Condvar::new(),
        }
    }

    /// Lets the refill thread replace what requests took.
    pub(crate) fn request_done(&self) {
        self.refill.notify_all();
    }

    /// A ready VM for `key`, if one is there. The refill waits for [`Pool::request_done`]:
    /// building a VM now would compete with the request for the CPU.
    pub(crate) fn take(&self, key: &Path) -> Option<VmShell> {
        lock(&self.ready).get_mut(key)?.pop_front()
    }

    /// The refill thread's loop (never returns).
    pub(crate) fn refill(
        &self,
        kvm: &Arc<kvm_ioctls::Kvm>,
        pooled: &[(PathBuf, Target)],
        seccomp: bool,
    ) {
        if seccomp {
            let _ = sandbox::confine_this_thread_as(Profile::FleetWorker);
        }
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
            if let Ok(shell) = prepare_shell(kvm, target) {
                ready = lock(&self.ready);
                if let Some(queue) = ready.get_mut(key) {
                    queue.push_back(shell);
                }
            } else {
                // Creating VMs fails (out of memory or fds): try again later, never spin.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A shell whose RAM holds `target`'s pages, populated (a snapshot's, copied in now).
pub(crate) fn prepare_shell(
    kvm: &Arc<kvm_ioctls::Kvm>,
    target: &Target,
) -> Result<VmShell, LaunchError> {
    let ram = launch::load_ram(target, target.mem_size(0), true)?;
    Ok(VmShell::create_with(
        Arc::clone(kvm),
        ram,
        &mut Timeline::default(),
    )?)
}
