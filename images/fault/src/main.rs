//! Triggers the CPU fault named by its argument, to show (and test) crash reports:
//! null, write-code, stack-overflow, ud2, div0, int3, privileged, wild-jump.

#![no_std]
#![no_main]

use core::arch::asm;
use core::hint::black_box;
use kernel::eprintln;

kernel::main!(main);

fn main(mut args: kernel::Args) -> i32 {
    match args.nth(1).unwrap_or("") {
        "null" => null_dereference(),
        "write-code" => write_to_code(),
        "stack-overflow" => {
            recurse(0);
        }
        // SAFETY (all asm below): each instruction only raises the CPU exception under test.
        "ud2" => unsafe { asm!("ud2") },
        "div0" => unsafe {
            asm!("xor edx, edx", "xor ecx, ecx", "div ecx", out("eax") _, out("edx") _, out("ecx") _)
        },
        "int3" => unsafe { asm!("int3") },
        "privileged" => unsafe { asm!("hlt") },
        "wild-jump" => unsafe { asm!("jmp rax", in("rax") 0x7fff_0000_0000u64, options(noreturn)) },
        other => {
            eprintln!(
                "fault: unknown fault '{other}' (null, write-code, stack-overflow, ud2, div0, int3, privileged, wild-jump)"
            );
            return 2;
        }
    }
    eprintln!("fault: survived");
    1
}

#[inline(never)]
fn null_dereference() {
    let pointer: *const u64 = black_box(core::ptr::null());
    // SAFETY: deliberately invalid; the page fault is the point.
    let value = unsafe { pointer.read_volatile() };
    black_box(value);
}

#[inline(never)]
fn write_to_code() {
    let code = black_box(main as *const () as *mut u8);
    // SAFETY: deliberately invalid: code pages are read-only.
    unsafe { code.write_volatile(0x90) };
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 128]);
    recurse(depth + 1) + frame[black_box(0)]
}
