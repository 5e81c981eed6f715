//! The QEMU peer: a kernel of a few instructions, assembled and linked here, with a PVH ELF
//! note so that QEMU enters it in 32-bit protected mode; it prints "hello" on COM1 and leaves
//! through isa-debug-exit. QEMU runs it as `-M microvm` with qboot, flags as in DESIGN.md.

use super::peer::{Peer, Setup, which};
use crate::error::{Error, Result};
use std::path::Path;
use std::process::Command;

/// The value the kernel writes to isa-debug-exit.
const EXIT_VALUE: i32 = 0x2a;
/// QEMU's exit status for it: `(value << 1) | 1`.
const EXPECTED_STATUS: i32 = (EXIT_VALUE << 1) | 1;
/// qboot: without it microvm runs SeaBIOS, every instruction of which is emulated here.
const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// The kernel. QEMU reads the PVH entry from the `Xen` note of type 18
/// (`XEN_ELFNOTE_PHYS32_ENTRY`) and enters it with paging off and flat 4 GiB segments.
const KERNEL_S: &str = r#"
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4                 /* name size: "Xen\0" */
    .long 4                 /* descriptor size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start         /* the 32-bit physical entry */

    .text
    .code32
    .globl pvh_start
pvh_start:
    cli
    mov $message, %esi
    mov $0x3f8, %dx         /* COM1 data register */
1:  movb (%esi), %al
    test %al, %al
    jz 2f
    outb %al, %dx
    inc %esi
    jmp 1b
2:  mov $0xf4, %dx          /* isa-debug-exit */
    mov $EXIT_VALUE, %eax
    outl %eax, %dx
3:  hlt                     /* not reached unless the device is missing */
    jmp 3b

message:
    .asciz "hello\n"
"#;

/// One load segment at 1 MiB and the note in its own `PT_NOTE`.
const KERNEL_LD: &str = r#"
ENTRY(pvh_start)
PHDRS {
    text PT_LOAD FLAGS(5);
    note PT_NOTE FLAGS(4);
}
SECTIONS {
    . = 0x100000;
    .text : { *(.text) } :text
    .note.Xen : { *(.note.Xen) } :text :note
}
"#;

/// Sets up QEMU to boot the kernel.
pub(crate) fn setup(dir: &Path) -> Setup {
    let Some(program) = which("qemu-system-x86_64") else {
        return Setup::not_installed("qemu", "apt-get install qemu-system-x86");
    };
    match prepare(dir) {
        Ok(args) => {
            let what = "QEMU -M microvm + qboot, PVH kernel of a few instructions".to_owned();
            let mut peer = Peer::new(dir, "qemu", what, program, args, "hello");
            peer.expect_status = EXPECTED_STATUS;
            Setup::Ready(peer)
        }
        Err(err) => Setup::failed("qemu", &err),
    }
}

/// Builds the kernel into `dir` and returns QEMU's arguments.
fn prepare(dir: &Path) -> Result<Vec<String>> {
    if !Path::new(QBOOT).is_file() {
        return Err(Error::Check(format!(
            "{QBOOT} is missing (the qemu-system-x86 package ships it)"
        )));
    }
    let kernel = build_kernel(dir)?;
    let machine = "microvm,x-option-roms=off,rtc=off,pit=off,pic=off,isa-serial=on";
    let mut args: Vec<String> = ["-M", machine, "-bios", QBOOT]
        .into_iter()
        .chain([
            "-cpu",
            "host,arch-capabilities=off",
            "-enable-kvm",
            "-m",
            "16M",
        ])
        .chain([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
        ])
        .chain([
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-kernel",
        ])
        .map(String::from)
        .collect();
    args.push(kernel);
    Ok(args)
}

fn build_kernel(dir: &Path) -> Result<String> {
    let source = dir.join("pvh-hello.S");
    let script = dir.join("pvh-hello.ld");
    let object = dir.join("pvh-hello.o");
    let kernel = dir.join("pvh-hello");
    std::fs::write(&source, KERNEL_S).map_err(Error::io("cannot write pvh-hello.S"))?;
    std::fs::write(&script, KERNEL_LD).map_err(Error::io("cannot write pvh-hello.ld"))?;
    let define = format!("-DEXIT_VALUE={EXIT_VALUE}");
    run_tool(
        Command::new("cc")
            .args(["-m32", "-c", &define, "-o"])
            .arg(&object)
            .arg(&source),
    )?;
    run_tool(
        Command::new("ld")
            .args(["-m", "elf_i386", "-nostdlib", "-T"])
            .arg(&script)
            .arg("-o")
            .arg(&kernel)
            .arg(&object),
    )?;
    Ok(kernel.display().to_string())
}

fn run_tool(cmd: &mut Command) -> Result<()> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let output = cmd
        .output()
        .map_err(Error::io(format!("cannot run {program}")))?;
    if !output.status.success() {
        return Err(Error::tool(program, output.status, &output.stderr));
    }
    Ok(())
}
