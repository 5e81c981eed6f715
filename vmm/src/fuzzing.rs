//! Entry points for fuzzers and property tests (`tests/tests/fuzz.rs`, `cargo xtask fuzz`):
//! each feeds untrusted bytes to one of the VMM's parsers or decoders and checks the promises
//! it makes about what it accepts. None of them may panic, whatever the input.

use crate::memory::GuestRam;
use crate::snapshot::{Snapshot, SnapshotError};
use crate::vm::Console;
use crate::vm::exits::{Exit, ExitHandler, Limits};
use std::os::fd::FromRawFd;

/// Decodes an `out` of `data` to `port` against `ram`, as the exit handler would; on success
/// checks that the decoded request lies in RAM. `true` when it was accepted.
pub fn hypercall(ram: &GuestRam, port: u16, data: &[u8]) -> bool {
    use crate::vm::hypercall::{Hypercall, decode};
    let Some(call) = abi::port::Hypercall::from_port(port) else {
        return false;
    };
    match decode(call, data, ram) {
        Ok(Hypercall::ConsoleWrite(request)) => {
            assert!(request.len <= abi::hypercall::CONSOLE_WRITE_MAX);
            assert!(ram.check_range(request.buf, u64::from(request.len)).is_ok());
            true
        }
        Ok(_) => true,
        Err(_) => false,
    }
}

/// A guest's exit handler with its console going nowhere, for feeding random exits.
pub struct Exits {
    handler: ExitHandler,
}

impl Default for Exits {
    /// With the standard devices and a stdin and volume device without input or volumes.
    fn default() -> Self {
        Self::with_devices(&crate::devices::DeviceConfig::default())
    }
}

impl Exits {
    /// With the devices `devices` asks for (volumes to feed random file requests to).
    pub fn with_devices(devices: &crate::devices::DeviceConfig) -> Self {
        let console = Console {
            stdout: Box::new(std::io::sink()),
            stderr: Box::new(std::io::sink()),
        };
        let limits = Limits {
            deadline: None,
            max_output: 1 << 20,
            stop_at_snapshot_point: false,
        };
        Self {
            handler: ExitHandler::new(console, crate::devices::PortBus::new(devices), limits),
        }
    }

    /// Handles an `out` (`write`) or `in` of `data` at `port`; `true` when the guest may go
    /// on. Sleep hypercalls are skipped (they would really sleep).
    pub fn port(&mut self, ram: &GuestRam, write: bool, port: u16, data: &mut [u8]) -> bool {
        if port == abi::port::SLEEP {
            return true;
        }
        let exit = if write {
            Exit::IoOut { port, data }
        } else {
            Exit::IoIn { port, data }
        };
        matches!(
            self.handler.handle(ram, exit),
            crate::vm::exits::Action::Continue
        )
    }
}

/// Validates `bytes` as a snapshot file (through a memfd, as if opened from disk).
pub fn snapshot(bytes: &[u8]) -> Result<(), SnapshotError> {
    use std::io::Write;
    // SAFETY: memfd_create with a static NUL-terminated name; the fd is checked below.
    let fd = unsafe { libc::memfd_create(c"flick-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes).expect("writing a memfd");
    let snapshot = Snapshot::from_open_file(
        "<fuzz>".as_ref(),
        &file,
        bytes.len() as u64,
        crate::snapshot::Pages::Shared,
    )?;
    // Whatever was accepted must satisfy the promises restores rely on.
    assert!(snapshot.page_count() as u64 <= snapshot.mem_size / 4096);
    assert!(snapshot.vcpu().is_flick_guest());
    // `vmm run --from`'s path reads the same file straight into a VM's RAM, checking the
    // data there: a file accepted whole must load whole that way too.
    let once = Snapshot::from_open_file(
        "<fuzz>".as_ref(),
        &file,
        bytes.len() as u64,
        crate::snapshot::Pages::Once,
    )
    .expect("a snapshot accepted for many VMs is accepted for one");
    // One RAM per size for the whole run (mapping 16 MiB per accepted file would dominate it);
    // what an earlier file left in it does not matter to loading.
    thread_local! {
        static RAM: std::cell::RefCell<Option<GuestRam>> = const { std::cell::RefCell::new(None) };
    }
    RAM.with_borrow_mut(|ram| {
        if ram.as_ref().is_none_or(|r| r.size() != once.mem_size) {
            *ram = Some(GuestRam::new(once.mem_size).expect("guest RAM of a validated size"));
        }
        let ram = ram.as_ref().expect("set above");
        once.map_into(ram, false)
            .expect("the pages of an accepted snapshot load into RAM");
    });
    Ok(())
}

/// Recomputes the checksums of a (mutated) snapshot file from the counts its header states,
/// where they still describe ranges of the file; otherwise leaves the bytes as they are.
pub fn fix_snapshot_checksums(bytes: &mut [u8]) {
    use crate::snapshot::format::{HEADER_SIZE, Header, meta_crc, meta_len};
    use vm_memory::ByteValued;
    let Some(head) = bytes.get(..HEADER_SIZE) else {
        return;
    };
    let Some(mut header) = crate::memory::value_from_bytes::<Header>(head) else {
        return;
    };
    let data = usize::try_from(header.data_offset)
        .ok()
        .and_then(|start| bytes.get(start..));
    if let Some(data) = data {
        header.data_crc = crc32fast::hash(data);
    }
    let Some(len) = meta_len(header.segment_count, header.device_bytes, header.page_count) else {
        return;
    };
    let Some(meta) = HEADER_SIZE
        .checked_add(len)
        .and_then(|end| bytes.get(HEADER_SIZE..end))
    else {
        return;
    };
    header.meta_crc = meta_crc(&header, meta);
    bytes[..HEADER_SIZE].copy_from_slice(header.as_slice());
}
