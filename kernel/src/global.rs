//! A cell for kernel globals. The guest has one vCPU and no interrupts at ring 3, so the
//! only way to reach a global twice at once is re-entrance (a panic while printing); the busy
//! flag turns that into `None` instead of aliasing.

use core::cell::{Cell, UnsafeCell};
use core::ops::{Deref, DerefMut};

/// A global that hands out one `&mut T` at a time.
pub struct Global<T> {
    busy: Cell<bool>,
    value: UnsafeCell<T>,
}

// SAFETY: the guest runs one thread on one vCPU without interrupts; `with` refuses re-entrant
// access, so no two `&mut T` exist at once.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    /// A global holding `value`.
    pub const fn new(value: T) -> Self {
        Self {
            busy: Cell::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Runs `f` on the value, or returns `None` if the value is already in use higher up the
    /// stack.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        if self.busy.replace(true) {
            return None;
        }
        // SAFETY: `busy` was false, so no other reference to the value is live.
        let result = f(unsafe { &mut *self.value.get() });
        self.busy.set(false);
        Some(result)
    }
}

impl<T: 'static> Global<T> {
    /// Holds the value until the guard is dropped (for borrows that outlive a closure, such as
    /// a stdin lock), or `None` if it is in use.
    pub fn lock(&'static self) -> Option<GlobalGuard<T>> {
        if self.busy.replace(true) {
            return None;
        }
        Some(GlobalGuard { global: self })
    }
}

/// Exclusive access to a [`Global`]'s value until dropped.
pub struct GlobalGuard<T: 'static> {
    global: &'static Global<T>,
}

impl<T> Deref for GlobalGuard<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while `busy` is set by it, so no `&mut T` is live
        // elsewhere.
        unsafe { &*self.global.value.get() }
    }
}

impl<T> DerefMut for GlobalGuard<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only borrow through the guard.
        unsafe { &mut *self.global.value.get() }
    }
}

impl<T> Drop for GlobalGuard<T> {
    fn drop(&mut self) {
        self.global.busy.set(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[kernel::test]
    fn test_global_reentrant_access_gets_none() {
        let global = Global::new(1);
        let inner = global.with(|_| global.with(|value| *value));
        assert_eq!(inner, Some(None));
    }

    #[kernel::test]
    fn test_global_is_free_again_after_access() {
        let global = Global::new(1);
        global.with(|value| *value += 1);
        assert_eq!(global.with(|value| *value), Some(2));
    }
}
