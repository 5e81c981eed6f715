//! The flick guest kernel: a small library OS that every image links with its app.
//!
//! All of it runs at ring 3. The VMM has already done the one-time work a kernel usually does
//! (page tables, GDT, TSS, IDT, boot info) before the first instruction here runs, and the
//! only ring-0 code a guest runs, the exception stubs that report CPU exceptions, is the
//! VMM's own: nothing in an image runs at ring 0.
//!
//! An app is a `#![no_std] #![no_main]` binary crate that names its entry point with
//! [`main!`]:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! use kernel::println;
//!
//! kernel::main!(main);
//!
//! fn main(args: kernel::Args) -> i32 {
//!     println!("hello, {} arguments", args.len());
//!     0
//! }
//! ```

#![no_std]
// `cargo test` builds the kernel as an image of its own, whose entry is the test harness.
#![cfg_attr(test, no_main)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

extern crate alloc;
// `#[kernel::test]` names `::kernel`, which must resolve inside the kernel too.
extern crate self as kernel;

pub mod args;
pub mod console;
pub mod fs;
mod global;
pub mod heap;
mod hypercall;
pub mod io;
mod mem;
#[cfg(feature = "net")]
pub mod net;
mod note;
mod panic;
mod start;
pub mod testing;
pub mod time;

pub use args::{Args, args, env, vars};
pub use kernel_macros::test;
pub use start::{boot_info, exit, snapshot_point};

/// Parks this guest until the VMM releases it (one exit). `vmm fleet --resident` keeps many
/// guests alive this way; `vmm run` releases at once.
///
/// ```ignore
/// kernel::wait_for_release();
/// ```
pub fn wait_for_release() {
    console::flush();
    hypercall::wait_for_release();
}

/// Names the app's entry point: `fn main(args: kernel::Args) -> i32`.
///
/// The returned value becomes the exit status of `vmm run`. With `snapshot = manual`, the app
/// calls [`snapshot_point`] itself instead of the kernel doing it before `main`. In a test
/// build (`cargo test`), the entry point is the test harness ([`testing`]) instead.
///
/// ```ignore
/// kernel::main!(main);
/// fn main(_args: kernel::Args) -> i32 { 0 }
/// ```
#[macro_export]
macro_rules! main {
    ($main:path) => {
        $crate::main!($main, snapshot = auto);
    };
    ($main:path, snapshot = auto) => {
        $crate::main!(@define $main, false);
    };
    ($main:path, snapshot = manual) => {
        $crate::main!(@define $main, true);
    };
    (@define $main:path, $manual:expr) => {
        #[cfg(not(test))]
        #[unsafe(no_mangle)]
        fn __flick_app_main() -> i32 {
            let main: fn($crate::Args) -> i32 = $main;
            main($crate::args())
        }

        #[cfg(not(test))]
        #[unsafe(no_mangle)]
        fn __flick_app_takes_own_snapshot() -> bool {
            $manual
        }

        // A test build runs the tests; the app's `main` only has to type-check.
        #[cfg(test)]
        const _: fn($crate::Args) -> i32 = $main;
        #[cfg(test)]
        $crate::__test_entry!();
    };
}

#[cfg(test)]
crate::__test_entry!();

/// Random bits for this run, from the VMM (different in every run restored from a snapshot).
///
/// ```ignore
/// let seed = kernel::random_seed();
/// ```
pub fn random_seed() -> u64 {
    boot_info().random_seed
}
