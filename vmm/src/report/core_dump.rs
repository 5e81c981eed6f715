//! ELF core files of crashed guests (`vmm run --core FILE`, `vmm fleet --cores DIR`), as
//! Solo5's dumpcore writes them: `gdb IMAGE FILE` shows the registers at the fault, the
//! backtrace and the guest's memory.
//!
//! The file: an ELF header (`ET_CORE`, x86-64); a `PT_NOTE` segment with `NT_PRSTATUS` (the
//! signal and the registers at the faulting instruction, from the exception frame),
//! `NT_PRPSINFO` (the guest's name) and `NT_FPREGSET` (x87/SSE state); then one `PT_LOAD` per
//! run of guest pages the guest touched (guest-physical = guest-virtual here). Runs of
//! touched pages that hold only zeros get no file bytes (`p_filesz` 0: gdb reads zeros), and
//! untouched RAM is left out, so a core is about as large as the memory the guest used. It is
//! written atomically and only ever replaces a regular file.

use super::crash::CrashState;
use crate::files::{WriteError, write_atomically};
use crate::memory::GuestRam;
use goblin::elf::header::{EM_X86_64, ET_CORE};
use goblin::elf::note::{NT_PRPSINFO, NT_PRSTATUS};
use goblin::elf::program_header::{PF_R, PF_W, PF_X, PT_LOAD, PT_NOTE};
use kvm_bindings::{kvm_regs, kvm_sregs};
use std::io::Write;
use std::path::Path;

const PAGE: u64 = 4096;
/// The note type of the FXSAVE area (`NT_PRFPREG`).
const NT_FPREGSET: u32 = 2;
const ELF_HEADER_SIZE: usize = 64;
const PROGRAM_HEADER_SIZE: usize = 56;
/// `struct elf_prstatus` on x86-64.
const PRSTATUS_SIZE: usize = 336;
/// Where `pr_reg` (a `user_regs_struct`) starts in it.
const PRSTATUS_REGS_OFFSET: usize = 112;
/// `struct elf_prpsinfo` on x86-64.
const PRPSINFO_SIZE: usize = 136;
/// At most this many `PT_LOAD` segments (`e_phnum` is 16 bits); a guest whose touched pages
/// scatter into more gets one segment spanning them all.
const MAX_SEGMENTS: usize = 60_000;

/// What a written core holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreSummary {
    /// Guest pages in the core (with or without file bytes).
    pub pages: u64,
    /// The file's size.
    pub file_size: u64,
}

/// A run of touched guest pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    /// First guest-physical address.
    addr: u64,
    /// Length in bytes.
    len: u64,
    /// Whether it holds data (else: zeros only, no file bytes).
    data: bool,
}

/// Writes the core of a guest that crashed in `crash`, with the RAM it had, to `path`.
pub(crate) fn write(
    path: &Path,
    ram: &GuestRam,
    crash: &CrashState,
    name: &str,
) -> Result<CoreSummary, WriteError> {
    let segments = segments(ram);
    let notes = notes(crash, name);
    let headers_end = ELF_HEADER_SIZE + PROGRAM_HEADER_SIZE * (1 + segments.len());
    let notes_offset = headers_end as u64;
    let data_start = (notes_offset + notes.len() as u64).next_multiple_of(PAGE);
    let mut head = elf_header(1 + segments.len());
    head.extend(program_header(
        PT_NOTE,
        0,
        notes_offset,
        0,
        notes.len() as u64,
        0,
        4,
    ));
    let mut offset = data_start;
    for segment in &segments {
        let file_len = if segment.data { segment.len } else { 0 };
        head.extend(program_header(
            PT_LOAD,
            PF_R | PF_W | PF_X,
            if segment.data { offset } else { data_start },
            segment.addr,
            file_len,
            segment.len,
            PAGE,
        ));
        offset += file_len;
    }
    head.extend_from_slice(&notes);
    head.resize(data_start as usize, 0);
    write_atomically(path, |file| {
        let mut out = std::io::BufWriter::with_capacity(64 << 10, file);
        out.write_all(&head)?;
        let mut page = vec![0u8; PAGE as usize];
        for segment in segments.iter().filter(|s| s.data) {
            for at in (segment.addr..segment.addr + segment.len).step_by(PAGE as usize) {
                ram.read(at, &mut page).map_err(std::io::Error::other)?;
                out.write_all(&page)?;
            }
        }
        out.flush()
    })?;
    Ok(CoreSummary {
        pages: segments.iter().map(|s| s.len / PAGE).sum(),
        file_size: offset,
    })
}

/// The touched pages of `ram` as runs of data pages and runs of zero pages (or, should that
/// make too many segments, runs of touched pages; or, failing that, one span of them all).
fn segments(ram: &GuestRam) -> Vec<Segment> {
    let mut page = vec![0u8; PAGE as usize];
    let pages: Vec<(u64, bool)> = ram
        .resident_page_list()
        .into_iter()
        .filter_map(|number| {
            let addr = number * PAGE;
            ram.read(addr, &mut page).ok()?;
            Some((addr, page.iter().any(|&b| b != 0)))
        })
        .collect();
    let split = runs(&pages, true);
    if split.len() <= MAX_SEGMENTS {
        return split;
    }
    let merged = runs(&pages, false);
    if merged.len() <= MAX_SEGMENTS {
        return merged;
    }
    let (first, last) = (merged[0], merged[merged.len() - 1]);
    vec![Segment {
        addr: first.addr,
        len: last.addr + last.len - first.addr,
        data: true,
    }]
}

/// Runs of contiguous pages (`(address, holds data)`, ascending); with `split_zero`, a run
/// also ends where pages change from data to zeros or back, else every run holds data.
fn runs(pages: &[(u64, bool)], split_zero: bool) -> Vec<Segment> {
    let mut segments: Vec<Segment> = Vec::new();
    for &(addr, data) in pages {
        let data = data || !split_zero;
        match segments.last_mut() {
            Some(last) if last.addr + last.len == addr && last.data == data => last.len += PAGE,
            _ => segments.push(Segment {
                addr,
                len: PAGE,
                data,
            }),
        }
    }
    segments
}

fn elf_header(phnum: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(ELF_HEADER_SIZE);
    h.extend_from_slice(b"\x7fELF");
    h.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, System V ABI
    h.extend_from_slice(&[0; 8]);
    h.extend_from_slice(&ET_CORE.to_le_bytes());
    h.extend_from_slice(&EM_X86_64.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes()); // e_version
    h.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    h.extend_from_slice(&(ELF_HEADER_SIZE as u64).to_le_bytes()); // e_phoff
    h.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    h.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    h.extend_from_slice(&(ELF_HEADER_SIZE as u16).to_le_bytes());
    h.extend_from_slice(&(PROGRAM_HEADER_SIZE as u16).to_le_bytes());
    h.extend_from_slice(&(phnum as u16).to_le_bytes());
    h.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    h.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    h.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    h
}

fn program_header(
    kind: u32,
    flags: u32,
    offset: u64,
    addr: u64,
    file_len: u64,
    mem_len: u64,
    align: u64,
) -> Vec<u8> {
    let mut p = Vec::with_capacity(PROGRAM_HEADER_SIZE);
    p.extend_from_slice(&kind.to_le_bytes());
    p.extend_from_slice(&flags.to_le_bytes());
    for word in [offset, addr, addr, file_len, mem_len, align] {
        p.extend_from_slice(&word.to_le_bytes());
    }
    p
}

/// The `PT_NOTE` contents.
fn notes(crash: &CrashState, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    note(&mut out, NT_PRSTATUS, &prstatus(crash));
    note(&mut out, NT_PRPSINFO, &prpsinfo(name));
    if let Some(fxsave) = &crash.fxsave {
        note(&mut out, NT_FPREGSET, &fxsave[..]);
    }
    out
}

/// One `"CORE"` note, padded to 4 bytes.
fn note(out: &mut Vec<u8>, kind: u32, desc: &[u8]) {
    out.extend_from_slice(&5u32.to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(b"CORE\0\0\0\0");
    out.extend_from_slice(desc);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn prstatus(crash: &CrashState) -> Vec<u8> {
    let mut status = vec![0u8; PRSTATUS_SIZE];
    status[0..4].copy_from_slice(&crash.signal.to_le_bytes()); // pr_info.si_signo
    status[12..14].copy_from_slice(&(crash.signal as u16).to_le_bytes()); // pr_cursig
    status[32..36].copy_from_slice(&1i32.to_le_bytes()); // pr_pid
    for (i, value) in user_regs(&crash.regs, &crash.sregs).iter().enumerate() {
        let at = PRSTATUS_REGS_OFFSET + i * 8;
        status[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }
    let fpvalid = i32::from(crash.fxsave.is_some());
    status[328..332].copy_from_slice(&fpvalid.to_le_bytes());
    status
}

/// `struct user_regs_struct`, in its order.
fn user_regs(r: &kvm_regs, s: &kvm_sregs) -> [u64; 27] {
    [
        r.r15,
        r.r14,
        r.r13,
        r.r12,
        r.rbp,
        r.rbx,
        r.r11,
        r.r10,
        r.r9,
        r.r8,
        r.rax,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        u64::MAX, // orig_rax: not in a system call
        r.rip,
        u64::from(s.cs.selector),
        r.rflags,
        r.rsp,
        u64::from(s.ss.selector),
        s.fs.base,
        s.gs.base,
        u64::from(s.ds.selector),
        u64::from(s.es.selector),
        u64::from(s.fs.selector),
        u64::from(s.gs.selector),
    ]
}

fn prpsinfo(name: &str) -> Vec<u8> {
    let mut info = vec![0u8; PRPSINFO_SIZE];
    info[1] = b'R'; // pr_sname
    info[24..28].copy_from_slice(&1i32.to_le_bytes()); // pr_pid
    let fname = &name.as_bytes()[..name.len().min(15)];
    info[40..40 + fname.len()].copy_from_slice(fname);
    let args = &name.as_bytes()[..name.len().min(79)];
    info[56..56 + args.len()].copy_from_slice(args);
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crash() -> CrashState {
        CrashState {
            signal: libc::SIGSEGV,
            regs: kvm_regs {
                rip: 0x20_1234,
                rsp: 0x1f_ff00,
                rax: 7,
                ..Default::default()
            },
            sregs: kvm_sregs::default(),
            fxsave: Some(Box::new([0; 512])),
        }
    }

    #[test]
    fn test_segments_split_data_and_zero_runs_of_touched_pages() {
        let ram = GuestRam::new(4 << 20).unwrap();
        ram.write(0x20_0000, &[1]).unwrap();
        ram.write(0x20_1000, &[0]).unwrap(); // touched, zero
        ram.write(0x20_2000, &[0]).unwrap();
        ram.write(0x30_0000, &[2]).unwrap();
        let found = segments(&ram);
        assert_eq!(
            found,
            [
                Segment {
                    addr: 0x20_0000,
                    len: 0x1000,
                    data: true
                },
                Segment {
                    addr: 0x20_1000,
                    len: 0x2000,
                    data: false
                },
                Segment {
                    addr: 0x30_0000,
                    len: 0x1000,
                    data: true
                },
            ]
        );
    }

    #[test]
    fn test_runs_merge_zero_pages_when_asked() {
        let pages = [
            (0x1000, true),
            (0x2000, false),
            (0x3000, true),
            (0x5000, false),
        ];
        assert_eq!(runs(&pages, true).len(), 4);
        let merged = runs(&pages, false);
        assert_eq!(merged.len(), 2);
        assert!(merged.iter().all(|s| s.data));
        assert_eq!((merged[0].addr, merged[0].len), (0x1000, 0x3000));
    }

    #[test]
    fn test_core_file_layout_is_elf_core_with_notes_and_loads() {
        let ram = GuestRam::new(4 << 20).unwrap();
        ram.write(0x20_0000, b"guest bytes").unwrap();
        ram.write(0x20_1000, &[0]).unwrap();
        let dir = std::env::temp_dir().join(format!("flick-core-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("core");
        let summary = write(&path, &ram, &crash(), "hello").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, summary.file_size);
        assert_eq!(summary.pages, 2);
        let elf = goblin::elf::Elf::parse(&bytes).unwrap();
        assert_eq!(elf.header.e_type, ET_CORE);
        assert_eq!(elf.header.e_machine, EM_X86_64);
        let loads: Vec<_> = elf
            .program_headers
            .iter()
            .filter(|p| p.p_type == PT_LOAD)
            .collect();
        assert_eq!(loads.len(), 2);
        assert_eq!(
            (loads[0].p_vaddr, loads[0].p_filesz, loads[0].p_memsz),
            (0x20_0000, 0x1000, 0x1000)
        );
        let at = loads[0].p_offset as usize;
        assert_eq!(&bytes[at..at + 11], b"guest bytes");
        assert_eq!(
            (loads[1].p_vaddr, loads[1].p_filesz, loads[1].p_memsz),
            (0x20_1000, 0, 0x1000)
        );
        let notes: Vec<_> = elf
            .iter_note_headers(&bytes)
            .unwrap()
            .map(|n| n.unwrap())
            .collect();
        let kinds: Vec<u32> = notes.iter().map(|n| n.n_type).collect();
        assert_eq!(kinds, [NT_PRSTATUS, NT_PRPSINFO, NT_FPREGSET]);
        assert!(notes.iter().all(|n| n.name == "CORE"));
        let status = notes[0].desc;
        let rip_at = PRSTATUS_REGS_OFFSET + 16 * 8;
        assert_eq!(
            u64::from_le_bytes(status[rip_at..rip_at + 8].try_into().unwrap()),
            0x20_1234
        );
        assert_eq!(i32::from_le_bytes(status[0..4].try_into().unwrap()), 11);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
