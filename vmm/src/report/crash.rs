//! Crash reports: what the guest was doing when it stopped abnormally, on one screen.

use crate::arch::layout::{PAGE_SIZE, STACK_GUARD_ADDR};
use crate::memory::GuestRam;
use abi::exception::{SAVED_REGISTERS, has_error_code};
use kvm_bindings::{kvm_regs, kvm_sregs};
use std::fmt::Write;

/// Mnemonic and name of an exception vector.
pub fn exception_name(vector: u8) -> (&'static str, &'static str) {
    match vector {
        0 => ("#DE", "divide error"),
        1 => ("#DB", "debug"),
        2 => ("NMI", "non-maskable interrupt"),
        3 => ("#BP", "breakpoint"),
        4 => ("#OF", "overflow"),
        5 => ("#BR", "bound range exceeded"),
        6 => ("#UD", "invalid opcode"),
        7 => ("#NM", "device not available"),
        8 => ("#DF", "double fault"),
        9 => ("#MF", "coprocessor segment overrun"),
        10 => ("#TS", "invalid TSS"),
        11 => ("#NP", "segment not present"),
        12 => ("#SS", "stack-segment fault"),
        13 => ("#GP", "general protection fault"),
        14 => ("#PF", "page fault"),
        16 => ("#MF", "x87 floating-point error"),
        17 => ("#AC", "alignment check"),
        18 => ("#MC", "machine check"),
        19 => ("#XM", "SIMD floating-point exception"),
        20 => ("#VE", "virtualization exception"),
        21 => ("#CP", "control protection"),
        28 => ("#HV", "hypervisor injection"),
        29 => ("#VC", "VMM communication"),
        30 => ("#SX", "security exception"),
        _ => ("#??", "reserved vector"),
    }
}

/// Describes a page-fault error code, e.g. "write to a not-present page from user mode".
pub fn describe_page_fault(error_code: u64) -> String {
    let access = if error_code & 0x10 != 0 {
        "instruction fetch from"
    } else if error_code & 0x2 != 0 {
        "write to"
    } else {
        "read from"
    };
    let kind = if error_code & 0x1 != 0 {
        "a protected"
    } else {
        "a not-present"
    };
    let mode = if error_code & 0x4 != 0 {
        "user"
    } else {
        "supervisor"
    };
    let mut text = format!("{access} {kind} page from {mode} mode");
    if error_code & 0x8 != 0 {
        text.push_str(" (reserved bit set in a page-table entry)");
    }
    text
}

/// Why a faulting address is interesting, if it is.
fn address_hint(addr: u64) -> Option<&'static str> {
    if addr < PAGE_SIZE {
        Some("null pointer dereference")
    } else if (STACK_GUARD_ADDR..STACK_GUARD_ADDR + PAGE_SIZE).contains(&addr) {
        Some("stack overflow: the stack's guard page")
    } else {
        None
    }
}

/// The interrupt frame the stubs leave on the ring-0 stack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExceptionFrame {
    /// Error code (0 for vectors without one).
    pub error_code: u64,
    /// Faulting instruction.
    pub rip: u64,
    /// Code segment at the fault (its low two bits are the CPL).
    pub cs: u64,
    /// Flags.
    pub rflags: u64,
    /// Stack pointer at the fault.
    pub rsp: u64,
    /// The saved `rax`.
    pub rax: u64,
    /// The saved `rdx`.
    pub rdx: u64,
    /// Stack segment at the fault.
    pub ss: u64,
}

/// Reads the frame from the ring-0 stack at `rsp` (guest-controlled only through the fault
/// itself, but checked against RAM all the same).
pub fn read_frame(ram: &GuestRam, rsp: u64, vector: u8) -> Option<ExceptionFrame> {
    let word = |index: u64| ram.read_u64(rsp.checked_add(index * 8)?).ok();
    let mut at = SAVED_REGISTERS as u64;
    let error_code = if has_error_code(vector) {
        at += 1;
        word(at - 1)?
    } else {
        0
    };
    Some(ExceptionFrame {
        rdx: word(0)?,
        rax: word(1)?,
        error_code,
        rip: word(at)?,
        cs: word(at + 1)?,
        rflags: word(at + 2)?,
        rsp: word(at + 3)?,
        ss: word(at + 4)?,
    })
}

/// The signal a Linux process would get for exception `vector` (what gdb and core files show).
pub(crate) fn signal_for_vector(vector: u8) -> i32 {
    match vector {
        0 | 16 | 19 => libc::SIGFPE,  // #DE, #MF, #XM
        1 | 3 => libc::SIGTRAP,       // #DB, #BP
        6 => libc::SIGILL,            // #UD
        7 => libc::SIGFPE,            // #NM (no FPU: never here)
        11 | 12 | 17 => libc::SIGBUS, // #NP, #SS, #AC
        _ => libc::SIGSEGV,           // #PF, #GP, #DF, #BR, #OF, ...
    }
}

/// The guest's state when it crashed, kept for a core file: registers at the faulting
/// instruction (for an exception, as they were before the stub ran), the special registers,
/// and the SSE state.
#[derive(Debug, Clone)]
pub(crate) struct CrashState {
    /// The signal a process would have got.
    pub signal: i32,
    /// General registers at the fault.
    pub regs: kvm_regs,
    /// Segment selectors at the fault (`cs`, `ss`) and the rest of the special registers.
    pub sregs: kvm_sregs,
    /// The legacy FXSAVE area (x87, SSE registers, MXCSR), when it could be read.
    pub fxsave: Option<Box<[u8; 512]>>,
}

/// The registers at the faulting instruction: the stub's `regs` with what it saved or what the
/// CPU pushed put back.
pub(crate) fn regs_at_fault(regs: &kvm_regs, frame: &ExceptionFrame) -> kvm_regs {
    kvm_regs {
        rax: frame.rax,
        rdx: frame.rdx,
        rsp: frame.rsp,
        rip: frame.rip,
        rflags: frame.rflags,
        ..*regs
    }
}

/// Formats the register dump.
pub fn format_registers(out: &mut String, regs: &kvm_regs) {
    let named = [
        ("rax", regs.rax),
        ("rbx", regs.rbx),
        ("rcx", regs.rcx),
        ("rdx", regs.rdx),
        ("rsi", regs.rsi),
        ("rdi", regs.rdi),
        ("rbp", regs.rbp),
        ("rsp", regs.rsp),
        ("r8", regs.r8),
        ("r9", regs.r9),
        ("r10", regs.r10),
        ("r11", regs.r11),
        ("r12", regs.r12),
        ("r13", regs.r13),
        ("r14", regs.r14),
        ("r15", regs.r15),
        ("rip", regs.rip),
        ("rflags", regs.rflags),
    ];
    for row in named.chunks(4) {
        out.push(' ');
        for (name, value) in row {
            let _ = write!(out, " {name:>6} {value:#018x}");
        }
        out.push('\n');
    }
}

/// The report for an exception reported by a stub. `regs` are the vCPU's registers at the
/// stub's `out`; `frame` is what the stub left on the ring-0 stack.
pub fn exception_report(
    vector: u8,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
    frame: Option<ExceptionFrame>,
    symbolize: &dyn Fn(u64) -> Option<String>,
) -> String {
    let (mnemonic, name) = exception_name(vector);
    let mut out = format!("guest crashed: {name} ({mnemonic}, vector {vector})\n");
    let Some(frame) = frame else {
        let _ = writeln!(
            out,
            "  the exception frame at rsp {:#x} is unreadable",
            regs.rsp
        );
        format_registers(&mut out, regs);
        return out;
    };
    let mode = if frame.cs & 3 == 3 {
        "user mode (ring 3)"
    } else {
        "ring 0"
    };
    let location = symbolize(frame.rip)
        .map(|s| format!(" <{s}>"))
        .unwrap_or_default();
    let _ = writeln!(out, "  at rip {:#x}{location} in {mode}", frame.rip);
    if has_error_code(vector) {
        let _ = write!(out, "  error code {:#x}", frame.error_code);
        if vector == 14 {
            let _ = write!(out, ": {}", describe_page_fault(frame.error_code));
        }
        out.push('\n');
    }
    if vector == 14 {
        let hint = address_hint(sregs.cr2)
            .map(|h| format!(" ({h})"))
            .unwrap_or_default();
        let _ = writeln!(out, "  faulting address (cr2) {:#x}{hint}", sregs.cr2);
    }
    out.push_str("  registers:\n");
    format_registers(&mut out, &regs_at_fault(regs, &frame));
    out
}

/// Most frames a backtrace shows.
const MAX_FRAMES: usize = 32;

/// A best-effort backtrace: the faulting `rip`, then the return addresses found by walking the
/// frame-pointer chain from `rbp` (images are built with frame pointers). Every read is checked
/// against RAM and the chain must move up the stack, so a corrupt chain ends the walk; a last
/// line says so when the walk stopped before the chain's end (a zero frame pointer or return
/// address, which `_start` leaves).
pub fn backtrace(
    ram: &GuestRam,
    rip: u64,
    rbp: u64,
    symbolize: &dyn Fn(u64) -> Option<String>,
) -> String {
    let name = |addr: u64| {
        symbolize(addr)
            .map(|s| format!(" <{s}>"))
            .unwrap_or_default()
    };
    let mut out = format!("  backtrace:\n    #0  {rip:#018x}{}\n", name(rip));
    let mut frame = rbp;
    let mut depth = 1;
    let cut = loop {
        if frame == 0 {
            break None;
        }
        if depth == MAX_FRAMES {
            break Some(format!("cut at {MAX_FRAMES} frames"));
        }
        if !frame.is_multiple_of(8) {
            break Some(format!("cut: frame pointer {frame:#x} is misaligned"));
        }
        let (Ok(next), Ok(ret)) = (ram.read_u64(frame), ram.read_u64(frame.wrapping_add(8))) else {
            break Some(format!(
                "cut: frame pointer {frame:#x} is outside guest RAM"
            ));
        };
        if ret == 0 {
            break None;
        }
        // The return address points after the call: name the call itself.
        let _ = writeln!(
            out,
            "    #{depth:<2} {ret:#018x}{}",
            name(ret.saturating_sub(1))
        );
        depth += 1;
        if next != 0 && next <= frame {
            break Some(format!(
                "cut: the frame chain goes down the stack ({next:#x} after {frame:#x})"
            ));
        }
        frame = next;
    };
    if let Some(why) = cut {
        let _ = writeln!(out, "    ... backtrace {why}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_describe_page_fault_decodes_bits() {
        assert_eq!(
            describe_page_fault(0x6),
            "write to a not-present page from user mode"
        );
        assert_eq!(
            describe_page_fault(0x15),
            "instruction fetch from a protected page from user mode"
        );
        assert_eq!(
            describe_page_fault(0x1),
            "read from a protected page from supervisor mode"
        );
    }

    #[test]
    fn test_exception_names_cover_common_vectors() {
        assert_eq!(exception_name(14), ("#PF", "page fault"));
        assert_eq!(exception_name(6).0, "#UD");
        assert_eq!(exception_name(0).0, "#DE");
        assert_eq!(exception_name(200).0, "#??");
    }

    #[test]
    fn test_read_frame_with_error_code() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let words: [u64; 8] = [0xd, 0xa, 0x6, 0x20_1000, 0x23, 0x202, 0x1f_fff0, 0x1b];
        // rdx, rax, error code, rip, cs, rflags, rsp, ss
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        ram.write(0x5000, &bytes).unwrap();
        let frame = read_frame(&ram, 0x5000, 14).unwrap();
        assert_eq!(frame.error_code, 6);
        assert_eq!(frame.rip, 0x20_1000);
        assert_eq!(frame.cs, 0x23);
        assert_eq!(frame.rsp, 0x1f_fff0);
        assert_eq!((frame.rax, frame.rdx), (0xa, 0xd));
        assert_eq!(frame.ss, 0x1b);
        let no_code = read_frame(&ram, 0x5000, 6).unwrap();
        assert_eq!(no_code.rip, 0x6);
    }

    #[test]
    fn test_read_frame_outside_ram_is_none() {
        let ram = GuestRam::new(1 << 20).unwrap();
        assert_eq!(read_frame(&ram, u64::MAX - 8, 14), None);
        assert_eq!(read_frame(&ram, 1 << 20, 3), None);
    }

    #[test]
    fn test_backtrace_follows_frame_chain_and_stops_at_zero() {
        let ram = GuestRam::new(1 << 20).unwrap();
        // frame at 0x8000 -> 0x8100 -> end
        let write = |at: u64, a: u64, b: u64| {
            ram.write(at, &[a.to_le_bytes(), b.to_le_bytes()].concat())
                .unwrap()
        };
        write(0x8000, 0x8100, 0x20_1111);
        write(0x8100, 0, 0x20_2222);
        let text = backtrace(&ram, 0x20_0000, 0x8000, &|a| Some(format!("f{a:x}")));
        assert!(text.contains("#0  0x0000000000200000 <f200000>"), "{text}");
        assert!(text.contains("#1  0x0000000000201111 <f201110>"), "{text}");
        assert!(text.contains("#2  0x0000000000202222"), "{text}");
        assert_eq!(text.lines().count(), 4, "{text}");
    }

    #[test]
    fn test_backtrace_survives_a_looping_or_wild_chain() {
        let ram = GuestRam::new(1 << 20).unwrap();
        ram.write(
            0x8000,
            &[0x8000u64.to_le_bytes(), 0x1234u64.to_le_bytes()].concat(),
        )
        .unwrap();
        let text = backtrace(&ram, 1, 0x8000, &|_| None);
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(
            text.ends_with(
                "backtrace cut: the frame chain goes down the stack (0x8000 after 0x8000)\n"
            ),
            "{text}"
        );
        let text = backtrace(&ram, 1, u64::MAX - 7, &|_| None);
        assert_eq!(backtrace(&ram, 1, 0x8004, &|_| None).lines().count(), 3);
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.contains("is outside guest RAM"), "{text}");
    }

    #[test]
    fn test_backtrace_of_a_deep_chain_says_it_was_cut() {
        let ram = GuestRam::new(1 << 20).unwrap();
        for i in 0..40u64 {
            let at = 0x8000 + i * 0x10;
            ram.write(
                at,
                &[(at + 0x10).to_le_bytes(), 0x20_1000u64.to_le_bytes()].concat(),
            )
            .unwrap();
        }
        let text = backtrace(&ram, 1, 0x8000, &|_| None);
        assert_eq!(text.lines().count(), 2 + MAX_FRAMES, "{text}");
        assert!(text.ends_with("... backtrace cut at 32 frames\n"), "{text}");
    }

    #[test]
    fn test_exception_report_names_null_dereference() {
        let frame = ExceptionFrame {
            error_code: 4,
            rip: 0x20_1234,
            cs: 0x23,
            ..Default::default()
        };
        let sregs = kvm_sregs {
            cr2: 8,
            ..Default::default()
        };
        let report = exception_report(14, &kvm_regs::default(), &sregs, Some(frame), &|_| None);
        assert!(report.contains("page fault (#PF, vector 14)"), "{report}");
        assert!(report.contains("null pointer dereference"), "{report}");
        assert!(
            report.contains("read from a not-present page from user mode"),
            "{report}"
        );
        assert!(report.contains("0x201234"), "{report}");
    }
}
