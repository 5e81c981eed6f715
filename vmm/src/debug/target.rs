//! The gdbstub `Target` over a stopped guest, and the event loop that runs it between stops.
//!
//! Memory is guest-physical, which is also guest-virtual (identity-mapped). gdb may read any
//! RAM the guest could map (not the null page nor the stack's guard page, which the guest
//! cannot read either), and write RAM from the boot-info area up: the page tables, GDT, IDT,
//! TSS, stubs and ring-0 stacks below it are the VMM's, and ring 0 runs only the VMM's code.
//! Software breakpoints are `int3` bytes the VMM writes into the guest's code (read-only to
//! the guest, not to the VMM); reads show the original bytes.

use super::interrupt::Interrupter;
use super::{Connection, DebugError, GdbListener};
use crate::arch::layout::{BOOT_INFO_ADDR, PAGE_SIZE, STACK_GUARD_ADDR};
use crate::arch::tables::{USER_CS, USER_DS};
use crate::memory::GuestRam;
use crate::report::crash::signal_for_vector;
use crate::report::{Outcome, RunReport};
use crate::vm::debug::{DebugStop, Place, RFLAGS_TF, Stopped};
use crate::vm::{Console, Vm};
use gdbstub::common::Signal;
use gdbstub::conn::ConnectionExt as _;
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::{DisconnectReason, GdbStub, SingleThreadStopReason};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep,
    SingleThreadSingleStepOps,
};
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, SwBreakpoint, SwBreakpointOps,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::X86_64_SSE;
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

/// `int3`.
const INT3: u8 = 0xcc;
/// Most breakpoints at once (gdb sets a few; a bound keeps a confused client small).
const MAX_BREAKPOINTS: usize = 4096;

/// How gdb asked the guest to go on.
#[derive(Debug, Clone, Copy)]
enum Resume {
    Continue(Option<Signal>),
    Step(Option<Signal>),
}

/// A guest under gdb.
struct Debuggee<'a> {
    vm: &'a mut Vm,
    /// Where the guest stopped; `None` once it has ended.
    stopped: Option<Stopped>,
    /// Breakpoint address → the byte the `int3` replaced.
    breakpoints: BTreeMap<u64, u8>,
    resume: Resume,
    interrupter: Interrupter,
    /// The report of a guest that ended.
    report: Option<RunReport>,
}

/// Serves one gdb session for `vm` (stopped before its first instruction), then runs the guest
/// to its end if gdb left it alive.
pub(super) fn serve(
    vm: &mut Vm,
    console: Console,
    listener: &GdbListener,
) -> Result<RunReport, DebugError> {
    let stopped = vm.debug_start(console)?;
    let (connection, fd) = listener.accept()?;
    let interrupter = Interrupter::start(fd).map_err(DebugError::Accept)?;
    let mut debuggee = Debuggee {
        vm,
        stopped: Some(stopped),
        breakpoints: BTreeMap::new(),
        resume: Resume::Continue(None),
        interrupter,
        report: None,
    };
    let ended = GdbStub::new(connection).run_blocking::<EventLoop<'_>>(&mut debuggee);
    if let Some(report) = debuggee.report.take() {
        return Ok(report);
    }
    match ended {
        Ok(DisconnectReason::Kill) => Ok(debuggee.vm.debug_kill()),
        // Detached, or the connection dropped: the guest goes on without a debugger.
        _ => debuggee.run_to_end(),
    }
}

impl Debuggee<'_> {
    /// Takes the breakpoints out and runs the guest to its end, as `vmm run` would have.
    fn run_to_end(mut self) -> Result<RunReport, DebugError> {
        let breakpoints = std::mem::take(&mut self.breakpoints);
        for (addr, original) in breakpoints {
            let _ = self.vm.ram().write(addr, &[original]);
        }
        let never = AtomicBool::new(false);
        let mut stopped = self.stopped.take();
        loop {
            let Some(from) = stopped.take() else {
                return Ok(self.vm.debug_kill());
            };
            match self.vm.debug_run(&from, false, &never)? {
                (DebugStop::Finished(report), _) => return Ok(*report),
                (DebugStop::Exception { .. }, Some(at)) => return Ok(self.vm.debug_crash(&at)),
                (_, next) => stopped = next,
            }
        }
    }

    fn stopped(&mut self) -> TargetResult<&mut Stopped, Self> {
        self.stopped.as_mut().ok_or(TargetError::NonFatal)
    }

    /// Runs the guest as gdb asked, until the next stop to report.
    fn run(&mut self) -> Result<Option<SingleThreadStopReason<u64>>, DebugError> {
        let Some(from) = self.stopped.take() else {
            return Ok(Some(SingleThreadStopReason::Exited(0)));
        };
        let (step, signal) = match self.resume {
            Resume::Continue(signal) => (false, signal),
            Resume::Step(signal) => (true, signal),
        };
        // A signal gdb passes on ends the guest, as it would end a process that has no handler
        // (gdb passes SIGSEGV, SIGILL, SIGFPE, ... by default, not SIGTRAP or SIGINT).
        if let Some(signal) = signal.filter(|s| *s != Signal::SIGTRAP && *s != Signal::SIGINT) {
            let report = match from.place {
                Place::Stub { .. } => self.vm.debug_crash(&from),
                Place::Ring3 => self.vm.debug_kill(),
            };
            let reason = SingleThreadStopReason::Terminated(signal);
            self.report = Some(report);
            return Ok(Some(reason));
        }
        self.interrupter.running();
        let ran = self.vm.debug_run(&from, step, self.interrupter.flag());
        self.interrupter.stopped();
        let (stop, next) = ran?;
        self.stopped = next;
        if let Some(stopped) = &mut self.stopped {
            stopped.regs.rflags &= !RFLAGS_TF;
        }
        Ok(match stop {
            DebugStop::Interrupted => None,
            DebugStop::Stepped => Some(SingleThreadStopReason::DoneStep),
            DebugStop::Exception { vector } => Some(self.exception(vector, step)),
            DebugStop::Finished(report) => {
                let reason = ended(&report);
                self.report = Some(*report);
                Some(reason)
            }
        })
    }

    /// What gdb hears about exception `vector`: a breakpoint of its own, the end of a step,
    /// or a signal.
    fn exception(&mut self, vector: u8, step: bool) -> SingleThreadStopReason<u64> {
        let breakpoints = &self.breakpoints;
        let Some(stopped) = self.stopped.as_mut() else {
            return SingleThreadStopReason::Signal(Signal::SIGTRAP);
        };
        match vector {
            // `int3` traps after itself: back to the breakpoint's address.
            3 if breakpoints.contains_key(&stopped.regs.rip.wrapping_sub(1)) => {
                stopped.regs.rip -= 1;
                SingleThreadStopReason::SwBreak(())
            }
            1 if step => SingleThreadStopReason::DoneStep,
            _ => SingleThreadStopReason::Signal(gdb_signal(signal_for_vector(vector))),
        }
    }

    /// How many bytes from `addr` gdb may read (guest RAM the guest could map).
    fn readable(&self, addr: u64, len: usize) -> usize {
        let ram = self.vm.ram().size();
        let mut end = addr.saturating_add(len as u64).min(ram);
        for hole in [0, STACK_GUARD_ADDR] {
            if (hole..hole + PAGE_SIZE).contains(&addr) {
                return 0;
            }
            if addr < hole && end > hole {
                end = hole;
            }
        }
        end.saturating_sub(addr) as usize
    }
}

/// What gdb hears about a guest that ended.
fn ended(report: &RunReport) -> SingleThreadStopReason<u64> {
    match &report.outcome {
        Outcome::Exited(code) => SingleThreadStopReason::Exited(*code as u8),
        Outcome::Crashed(_) => SingleThreadStopReason::Terminated(gdb_signal(
            report.crash.as_ref().map_or(libc::SIGSEGV, |c| c.signal),
        )),
        Outcome::TimedOut(_) => SingleThreadStopReason::Terminated(Signal::SIGALRM),
        Outcome::BrokenPipe => SingleThreadStopReason::Terminated(Signal::SIGPIPE),
        Outcome::Killed => SingleThreadStopReason::Terminated(Signal::SIGKILL),
    }
}

/// gdb's number for a Linux signal (the remote protocol has its own numbering).
fn gdb_signal(linux: i32) -> Signal {
    match linux {
        libc::SIGILL => Signal::SIGILL,
        libc::SIGTRAP => Signal::SIGTRAP,
        libc::SIGFPE => Signal::SIGFPE,
        libc::SIGBUS => Signal::SIGBUS,
        libc::SIGSYS => Signal::SIGSYS,
        libc::SIGXFSZ => Signal::SIGXFSZ,
        libc::SIGPIPE => Signal::SIGPIPE,
        libc::SIGKILL => Signal::SIGKILL,
        _ => Signal::SIGSEGV,
    }
}

/// Offsets in the legacy FXSAVE area.
mod fxsave {
    pub const FCW: usize = 0;
    pub const FSW: usize = 2;
    pub const FTW: usize = 4;
    pub const FOP: usize = 6;
    pub const FIP: usize = 8;
    pub const FDP: usize = 16;
    pub const MXCSR: usize = 24;
    pub const ST: usize = 32;
    pub const XMM: usize = 160;
}

fn xsave_bytes(region: &[u32; 1024]) -> Vec<u8> {
    region[..128].iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn read_u16(bytes: &[u8], at: usize) -> u32 {
    u32::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
}

impl Target for Debuggee<'_> {
    type Arch = X86_64_SSE;
    type Error = DebugError;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadBase for Debuggee<'_> {
    fn read_registers(&mut self, out: &mut X86_64CoreRegs) -> TargetResult<(), Self> {
        let r = self.stopped()?.regs;
        out.regs = [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ];
        out.rip = r.rip;
        out.eflags = r.rflags as u32;
        out.segments.cs = u32::from(USER_CS);
        for segment in [
            &mut out.segments.ss,
            &mut out.segments.ds,
            &mut out.segments.es,
            &mut out.segments.fs,
            &mut out.segments.gs,
        ] {
            *segment = u32::from(USER_DS);
        }
        let xsave = self
            .vm
            .debug_xsave()
            .map_err(|e| TargetError::Fatal(e.into()))?;
        let area = xsave_bytes(&xsave.region);
        out.fpu.fctrl = read_u16(&area, fxsave::FCW);
        out.fpu.fstat = read_u16(&area, fxsave::FSW);
        out.fpu.ftag = u32::from(area[fxsave::FTW]);
        out.fpu.fop = read_u16(&area, fxsave::FOP);
        out.fpu.fioff = read_u32(&area, fxsave::FIP);
        out.fpu.fooff = read_u32(&area, fxsave::FDP);
        out.mxcsr = read_u32(&area, fxsave::MXCSR);
        for (i, st) in out.st.iter_mut().enumerate() {
            let at = fxsave::ST + i * 16;
            st.copy_from_slice(&area[at..at + 10]);
        }
        for (i, xmm) in out.xmm.iter_mut().enumerate() {
            let at = fxsave::XMM + i * 16;
            *xmm = u128::from_le_bytes(area[at..at + 16].try_into().unwrap_or_default());
        }
        Ok(())
    }

    fn write_registers(&mut self, new: &X86_64CoreRegs) -> TargetResult<(), Self> {
        let stopped = self.stopped()?;
        let r = &mut stopped.regs;
        [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ] = new.regs;
        r.rip = new.rip;
        // Only what ring 3 may hold is kept when the guest resumes (no IOPL, for one).
        r.rflags = u64::from(new.eflags);
        // Segments are the VMM's; the x87/SSE state is the guest's.
        let mut xsave = self
            .vm
            .debug_xsave()
            .map_err(|e| TargetError::Fatal(e.into()))?;
        let mut area = xsave_bytes(&xsave.region);
        let before = area.clone();
        area[fxsave::MXCSR..fxsave::MXCSR + 4].copy_from_slice(&new.mxcsr.to_le_bytes());
        area[fxsave::FCW..fxsave::FCW + 2].copy_from_slice(&(new.fpu.fctrl as u16).to_le_bytes());
        area[fxsave::FSW..fxsave::FSW + 2].copy_from_slice(&(new.fpu.fstat as u16).to_le_bytes());
        for (i, st) in new.st.iter().enumerate() {
            let at = fxsave::ST + i * 16;
            area[at..at + 10].copy_from_slice(st);
        }
        for (i, xmm) in new.xmm.iter().enumerate() {
            let at = fxsave::XMM + i * 16;
            area[at..at + 16].copy_from_slice(&xmm.to_le_bytes());
        }
        if area != before {
            for (word, bytes) in xsave.region.iter_mut().zip(area.chunks_exact(4)) {
                *word = u32::from_le_bytes(bytes.try_into().unwrap_or_default());
            }
            // An invalid MXCSR is refused by KVM: gdb hears an error, the guest keeps its own.
            self.vm
                .debug_set_xsave(&xsave)
                .map_err(|_| TargetError::NonFatal)?;
        }
        Ok(())
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        let len = self.readable(start, data.len());
        if len == 0 {
            return Err(TargetError::NonFatal);
        }
        self.vm
            .ram()
            .read(start, &mut data[..len])
            .map_err(|_| TargetError::NonFatal)?;
        for (&addr, &original) in self.breakpoints.range(start..start + len as u64) {
            data[(addr - start) as usize] = original;
        }
        Ok(len)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8]) -> TargetResult<(), Self> {
        let ram: &GuestRam = self.vm.ram();
        let end = start
            .checked_add(data.len() as u64)
            .ok_or(TargetError::NonFatal)?;
        if start < BOOT_INFO_ADDR || ram.check_range(start, data.len() as u64).is_err() {
            return Err(TargetError::NonFatal);
        }
        ram.write(start, data).map_err(|_| TargetError::NonFatal)?;
        // Bytes under a breakpoint are the original's; the `int3` stays.
        for (&addr, original) in self.breakpoints.range_mut(start..end) {
            *original = data[(addr - start) as usize];
            let _ = ram.write(addr, &[INT3]);
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for Debuggee<'_> {
    fn resume(&mut self, signal: Option<Signal>) -> Result<(), Self::Error> {
        self.resume = Resume::Continue(signal);
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for Debuggee<'_> {
    fn step(&mut self, signal: Option<Signal>) -> Result<(), Self::Error> {
        self.resume = Resume::Step(signal);
        Ok(())
    }
}

impl Breakpoints for Debuggee<'_> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for Debuggee<'_> {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if self.breakpoints.contains_key(&addr) {
            return Ok(true);
        }
        let ram = self.vm.ram();
        if addr < BOOT_INFO_ADDR || self.breakpoints.len() >= MAX_BREAKPOINTS {
            return Ok(false);
        }
        let mut original = [0u8];
        if ram.read(addr, &mut original).is_err() || ram.write(addr, &[INT3]).is_err() {
            return Ok(false);
        }
        self.breakpoints.insert(addr, original[0]);
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let Some(original) = self.breakpoints.remove(&addr) else {
            return Ok(false);
        };
        Ok(self.vm.ram().write(addr, &[original]).is_ok())
    }
}

/// Runs the guest between gdb's commands.
struct EventLoop<'a>(std::marker::PhantomData<&'a mut ()>);

impl<'a> BlockingEventLoop for EventLoop<'a> {
    type Target = Debuggee<'a>;
    type Connection = Connection;
    type StopReason = SingleThreadStopReason<u64>;

    fn wait_for_stop_reason(
        target: &mut Self::Target,
        conn: &mut Self::Connection,
    ) -> Result<Event<Self::StopReason>, WaitForStopReasonError<DebugError, std::io::Error>> {
        match target.run().map_err(WaitForStopReasonError::Target)? {
            Some(reason) => Ok(Event::TargetStopped(reason)),
            // Interrupted: gdb sent something (Ctrl-C is 0x03), or closed the connection.
            None => conn
                .read()
                .map(Event::IncomingData)
                .map_err(WaitForStopReasonError::Connection),
        }
    }

    fn on_interrupt(_target: &mut Self::Target) -> Result<Option<Self::StopReason>, DebugError> {
        Ok(Some(SingleThreadStopReason::Signal(Signal::SIGINT)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_gdb_signal_uses_gdb_numbers() {
        assert_eq!(gdb_signal(libc::SIGSEGV), Signal::SIGSEGV);
        assert_eq!(gdb_signal(libc::SIGBUS), Signal(10), "gdb's SIGBUS is 10");
        assert_eq!(gdb_signal(libc::SIGILL), Signal(4));
        assert_eq!(gdb_signal(libc::SIGFPE), Signal(8));
        assert_eq!(gdb_signal(libc::SIGTRAP), Signal(5));
    }
}
