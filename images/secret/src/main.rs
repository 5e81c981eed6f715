//! The reuse test's guest (`vmm serve` reuses VMs, `vm::recycle` in the VMM): one request
//! leaves a secret everywhere it can, the next looks for it everywhere it can read.
//!
//! - `secret plant SECRET`: SECRET (16 bytes) into a static buffer, 64 copies on the heap
//!   (never freed), a stack buffer, and every XMM register, and unusual MXCSR and x87 control
//!   word values, then exits 0;
//! - `secret seek CODED`: CODED is each byte of SECRET plus one, so that the secret is in
//!   neither this request's arguments nor anything it computes (bytes are compared as
//!   `byte + 1 == coded`); reads the XMM registers first, then scans the static buffer, the
//!   boot-info area, the whole stack and the whole heap; prints `clean` (exit 0) or where it
//!   found the secret (exit 1);
//! - `secret both SECRET`: plants, then seeks in the same run: it must find it (the check that
//!   the seeker can see what a planter leaves);
//! - `secret relay CODED`: seeks, then plants the secret for whoever runs next (every instance
//!   of a `vmm fleet` can run it: each must find nothing of the one before);
//! - `secret crash`: a null-pointer read (the VM of a crashed guest is never reused);
//! - `secret spin`: spins at ring 3 until it is stopped (nor is a timed-out guest's).

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::hint::black_box;
use core::sync::atomic::{AtomicU8, Ordering};
use kernel::println;

kernel::main!(main);

/// Bytes in a secret.
const LEN: usize = 16;
/// Start of the boot-info area (read-only to the guest), where arguments live.
const BOOT_INFO_AREA: usize = 0x3_0000;
/// Its size.
const BOOT_INFO_SIZE: usize = 0x1_0000;

/// MXCSR as `plant` leaves it: flush-to-zero, denormals-are-zero, round toward zero, all
/// exceptions masked (a fresh vCPU has 0x1f80).
const PLANTED_MXCSR: u32 = 0xffc0;
/// The x87 control word as `plant` leaves it: round toward zero, single precision, all
/// exceptions masked (a fresh vCPU has 0x037f).
const PLANTED_FPU_CW: u16 = 0x0c7f;

/// A buffer among the image's statics.
static STATIC_BUFFER: [AtomicU8; LEN] = [const { AtomicU8::new(0) }; LEN];

fn main(mut args: kernel::Args) -> i32 {
    // Before anything here uses them.
    let xmm = read_xmm();
    let control = read_control();
    let mode = args.nth(1).unwrap_or("");
    let word = args.next().unwrap_or("");
    match mode {
        "plant" => {
            let Some(secret) = secret_of(word.as_bytes()) else {
                return usage();
            };
            plant(&secret);
            println!("planted");
            0
        }
        "seek" => {
            let Some(coded) = secret_of(word.as_bytes()) else {
                return usage();
            };
            seek(&coded, &xmm, control)
        }
        "relay" => {
            let Some(coded) = secret_of(word.as_bytes()) else {
                return usage();
            };
            let status = seek(&coded, &xmm, control);
            plant(&coded.map(|b| b.wrapping_sub(1)));
            status
        }
        "both" => {
            let Some(secret) = secret_of(word.as_bytes()) else {
                return usage();
            };
            plant(&secret);
            let xmm = read_xmm();
            seek(&secret.map(|b| b.wrapping_add(1)), &xmm, read_control())
        }
        "spin" => loop {
            core::hint::spin_loop();
        },
        "crash" => {
            let pointer: *const u64 = black_box(core::ptr::null());
            // SAFETY: not safe at all: the point is the page fault.
            let value = unsafe { pointer.read_volatile() };
            i32::from(value == 0)
        }
        _ => usage(),
    }
}

fn usage() -> i32 {
    println!(
        "usage: secret plant SECRET | seek CODED | relay CODED | both SECRET | crash | spin (SECRET: 16 bytes)"
    );
    2
}

fn secret_of(bytes: &[u8]) -> Option<[u8; LEN]> {
    bytes.try_into().ok()
}

fn plant(secret: &[u8; LEN]) {
    for (slot, byte) in STATIC_BUFFER.iter().zip(secret) {
        slot.store(*byte, Ordering::Relaxed);
    }
    let mut heap = Vec::with_capacity(64 * LEN);
    for _ in 0..64 {
        heap.extend_from_slice(secret);
    }
    core::mem::forget(black_box(heap));
    let stack = black_box(*secret);
    black_box(&stack);
    load_xmm(secret);
    load_control(PLANTED_MXCSR, PLANTED_FPU_CW);
}

/// Sets MXCSR and the x87 control word.
fn load_control(mxcsr: u32, fpu_cw: u16) {
    // SAFETY: loads two control registers from valid locals: both values have no reserved
    // bit set and mask every exception.
    unsafe {
        core::arch::asm!(
            "ldmxcsr [{m}]",
            "fldcw [{c}]",
            m = in(reg) &mxcsr,
            c = in(reg) &fpu_cw,
            options(nostack, readonly),
        );
    }
}

/// MXCSR and the x87 control word as they are now.
fn read_control() -> (u32, u16) {
    let mut mxcsr = 0u32;
    let mut fpu_cw = 0u16;
    // SAFETY: stores the two control registers into valid locals.
    unsafe {
        core::arch::asm!(
            "stmxcsr [{m}]",
            "fnstcw [{c}]",
            m = in(reg) &mut mxcsr,
            c = in(reg) &mut fpu_cw,
            options(nostack),
        );
    }
    (mxcsr, fpu_cw)
}

/// Loads `secret` into every XMM register.
fn load_xmm(secret: &[u8; LEN]) {
    // SAFETY: reads 16 bytes from a valid array into XMM registers, which are declared
    // clobbered; no memory is written.
    unsafe {
        core::arch::asm!(
            "movdqu xmm0, [{p}]", "movdqu xmm1, [{p}]", "movdqu xmm2, [{p}]", "movdqu xmm3, [{p}]",
            "movdqu xmm4, [{p}]", "movdqu xmm5, [{p}]", "movdqu xmm6, [{p}]", "movdqu xmm7, [{p}]",
            "movdqu xmm8, [{p}]", "movdqu xmm9, [{p}]", "movdqu xmm10, [{p}]", "movdqu xmm11, [{p}]",
            "movdqu xmm12, [{p}]", "movdqu xmm13, [{p}]", "movdqu xmm14, [{p}]", "movdqu xmm15, [{p}]",
            p = in(reg) secret.as_ptr(),
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _, out("xmm4") _,
            out("xmm5") _, out("xmm6") _, out("xmm7") _, out("xmm8") _, out("xmm9") _,
            out("xmm10") _, out("xmm11") _, out("xmm12") _, out("xmm13") _, out("xmm14") _,
            out("xmm15") _,
            options(nostack, readonly),
        );
    }
}

/// The XMM registers as they are now.
fn read_xmm() -> [[u8; LEN]; 16] {
    let mut saved = [[0u8; LEN]; 16];
    // SAFETY: writes the 16 XMM registers into `saved`, exactly 256 bytes.
    unsafe {
        core::arch::asm!(
            "movdqu [{p}], xmm0", "movdqu [{p} + 16], xmm1", "movdqu [{p} + 32], xmm2",
            "movdqu [{p} + 48], xmm3", "movdqu [{p} + 64], xmm4", "movdqu [{p} + 80], xmm5",
            "movdqu [{p} + 96], xmm6", "movdqu [{p} + 112], xmm7", "movdqu [{p} + 128], xmm8",
            "movdqu [{p} + 144], xmm9", "movdqu [{p} + 160], xmm10", "movdqu [{p} + 176], xmm11",
            "movdqu [{p} + 192], xmm12", "movdqu [{p} + 208], xmm13", "movdqu [{p} + 224], xmm14",
            "movdqu [{p} + 240], xmm15",
            p = in(reg) saved.as_mut_ptr(),
            options(nostack),
        );
    }
    saved
}

/// Whether `bytes` are the secret whose coded form is `coded`.
fn is_secret(bytes: &[u8], coded: &[u8; LEN]) -> bool {
    bytes.len() == LEN
        && bytes
            .iter()
            .zip(coded)
            .all(|(b, c)| b.wrapping_add(1) == *c)
}

/// Looks for the secret coded as `coded` in `xmm` (the registers as the run found them) and
/// everywhere this guest can read, and for the planted `control` registers; 0 if it finds
/// nothing, else 1.
fn seek(coded: &[u8; LEN], xmm: &[[u8; LEN]; 16], control: (u32, u16)) -> i32 {
    let mut found = 0;
    if control.0 == PLANTED_MXCSR {
        println!("found in mxcsr");
        found += 1;
    }
    if control.1 == PLANTED_FPU_CW {
        println!("found in the x87 control word");
        found += 1;
    }
    for (index, register) in xmm.iter().enumerate() {
        if is_secret(register, coded) {
            println!("found in xmm{index}");
            found += 1;
        }
    }
    let info = kernel::boot_info();
    let regions = [
        ("static", STATIC_BUFFER.as_ptr() as usize, LEN),
        ("boot info", BOOT_INFO_AREA, BOOT_INFO_SIZE),
        (
            "stack",
            info.stack_bottom as usize,
            (info.stack_top - info.stack_bottom) as usize,
        ),
        (
            "heap",
            info.heap_start as usize,
            (info.heap_end - info.heap_start) as usize,
        ),
    ];
    for (name, start, len) in regions {
        if let Some(at) = find(start, len, coded) {
            println!("found in {name} at {at:#x}");
            found += 1;
        }
    }
    if found == 0 {
        println!("clean");
        0
    } else {
        1
    }
}

/// The first address in `start..start+len` holding the secret coded as `coded`.
fn find(start: usize, len: usize, coded: &[u8; LEN]) -> Option<usize> {
    let first = coded[0];
    for at in start..(start + len).saturating_sub(LEN - 1) {
        // SAFETY: the regions are mapped readable for the guest (the VMM's layout: boot info,
        // stack and heap are user pages; the static is ours), and `at + LEN` stays inside.
        let byte = unsafe { (at as *const u8).read_volatile() };
        if byte.wrapping_add(1) != first {
            continue;
        }
        // SAFETY: as above, LEN bytes inside the region.
        let candidate = unsafe { core::slice::from_raw_parts(at as *const u8, LEN) };
        if is_secret(candidate, coded) {
            return Some(at);
        }
    }
    None
}
