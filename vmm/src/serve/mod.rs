//! `vmm serve` and `vmm run --via`: a server that keeps VMs ready and runs requests in them, and
//! the client that makes `run --via` behave like a local `vmm run`.
//!
//! The server keeps, for every snapshot named at start, `pool` VMs created (VM, memory slot,
//! vCPU) with the snapshot's pages already mapped. A request takes one, rewrites its boot info,
//! runs it, streams the guest's output back and sends the exit status; the VM is then
//! destroyed and a refill thread creates a replacement. No VM ever runs a second request.
//! Requests for anything else (an image, or a snapshot not pooled) are served cold.
//!
//! Threads: the acceptor (reads requests, resolves targets, hands connections out), `workers`
//! runner threads and one refill thread. Runners and the refill thread are sandboxed; a runner
//! may write only to stdout, stderr and the one fd ([`CLIENT_FD_BASE`] + its index) where the
//! acceptor puts each client connection with `dup2`.
//!
//! Wire format: a request is a little-endian `u32` length and that many bytes of JSON
//! ([`Request`]); the server answers with frames `[kind: u8][len: u32 LE][payload]` of the
//! kinds in [`frame`], ending with `EXIT` or `ERROR`.

use crate::exit::Console;
use crate::image::Image;
use crate::memory::GuestRam;
use crate::sandbox::{self, Profile};
use crate::snapshot::{Snapshot, SnapshotError};
use crate::timeline::Timeline;
use crate::vm::{self, Outcome, Vm, VmConfig, VmError, VmShell};
use crate::watchdog::DeadlineService;
use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Runner `i` finds its client's connection at this fd plus `i`.
pub const CLIENT_FD_BASE: i32 = 900;
/// Largest request accepted.
pub const MAX_REQUEST: u32 = 1 << 20;

/// Frame kinds.
pub mod frame {
    /// Guest stdout bytes.
    pub const STDOUT: u8 = 1;
    /// Guest stderr bytes (and the VMM's report about the guest).
    pub const STDERR: u8 = 2;
    /// The exit status, `i32` little-endian; the last frame.
    pub const EXIT: u8 = 3;
    /// The request failed before the guest ran: a one-line error; the last frame (status 125).
    pub const ERROR: u8 = 4;
}

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be set up.
    #[error("cannot listen on {path}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A pooled snapshot is unusable.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// KVM is unusable.
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// What a client asks for.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// Absolute path of an image or snapshot.
    pub target: PathBuf,
    /// Arguments after the image name.
    pub args: Vec<String>,
    /// `KEY=VALUE` strings.
    pub env: Vec<String>,
    /// Timeout in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Console bytes allowed.
    pub max_output: u64,
    /// Guest RAM for images (snapshots bring their own).
    pub mem_size: u64,
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The Unix socket.
    pub socket: PathBuf,
    /// Ready VMs kept per pooled snapshot.
    pub pool: usize,
    /// Snapshots to pool.
    pub snapshots: Vec<PathBuf>,
    /// Runner threads.
    pub workers: usize,
    /// Sandbox runners and the refill thread.
    pub seccomp: bool,
    /// The longest any request may run; requests without a timeout get this one, so that a
    /// guest that spins cannot hold a runner for ever.
    pub max_timeout: Duration,
}

#[derive(Clone)]
enum Target {
    Snapshot(Arc<Snapshot>, Arc<Image>),
    Image(Arc<Image>),
}

struct Job {
    target: Target,
    key: PathBuf,
    request: Request,
}

/// Ready VMs, per pooled snapshot.
struct Pool {
    ready: Mutex<BTreeMap<PathBuf, VecDeque<VmShell>>>,
    wanted: usize,
    refill: Condvar,
}

impl Pool {
    /// Lets the refill thread replace what requests took.
    fn request_done(&self) {
        self.refill.notify_all();
    }

    fn take(&self, key: &Path) -> Option<VmShell> {
        let shell = self
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(key)?
            .pop_front();
        // The refill waits for `request_done`: building a VM now would compete with the
        // request for the CPU.
        shell
    }
}

/// Runs the server until the process is killed.
pub fn serve(config: &ServeConfig) -> Result<(), ServeError> {
    let kvm = vm::open_kvm()?;
    let mut targets: BTreeMap<PathBuf, Target> = BTreeMap::new();
    let mut pooled = Vec::new();
    for path in &config.snapshots {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        let snapshot = Arc::new(Snapshot::open(path)?);
        let layout = Arc::new(snapshot.layout());
        targets.insert(key.clone(), Target::Snapshot(Arc::clone(&snapshot), layout));
        pooled.push((key, snapshot));
    }
    let _ = std::fs::remove_file(&config.socket);
    let listener = UnixListener::bind(&config.socket).map_err(|source| ServeError::Listen {
        path: config.socket.clone(),
        source,
    })?;
    let pool = Arc::new(Pool {
        ready: Mutex::new(
            pooled
                .iter()
                .map(|(k, _)| (k.clone(), VecDeque::new()))
                .collect(),
        ),
        wanted: config.pool,
        refill: Condvar::new(),
    });
    let deadlines = Arc::new(DeadlineService::start(config.seccomp));
    {
        let (pool, kvm, seccomp) = (Arc::clone(&pool), Arc::clone(&kvm), config.seccomp);
        std::thread::Builder::new()
            .name("refill".into())
            .spawn(move || refill(&pool, &kvm, &pooled, seccomp))
            .map_err(|source| ServeError::Listen {
                path: config.socket.clone(),
                source,
            })?;
    }
    let (idle_tx, idle_rx) = mpsc::channel::<usize>();
    let mut jobs = Vec::new();
    for index in 0..config.workers.max(1) {
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        jobs.push(job_tx);
        let (pool, kvm, deadlines, idle, seccomp) = (
            Arc::clone(&pool),
            Arc::clone(&kvm),
            Arc::clone(&deadlines),
            idle_tx.clone(),
            config.seccomp,
        );
        std::thread::Builder::new()
            .name(format!("runner-{index}"))
            .spawn(move || runner(index, &job_rx, &idle, &pool, &kvm, &deadlines, seccomp))
            .map_err(|source| ServeError::Listen {
                path: config.socket.clone(),
                source,
            })?;
        let _ = idle_tx.send(index);
    }
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut request = match read_request(&mut stream) {
            Ok(request) => request,
            Err(why) => {
                let _ = send_frame(&mut stream, frame::ERROR, why.as_bytes());
                continue;
            }
        };
        let limit = config.max_timeout.as_millis() as u64;
        request.timeout_ms = Some(request.timeout_ms.map_or(limit, |t| t.min(limit)));
        let (key, target) = match resolve(&mut targets, &request) {
            Ok(found) => found,
            Err(why) => {
                let _ = send_frame(&mut stream, frame::ERROR, why.as_bytes());
                continue;
            }
        };
        let Ok(index) = idle_rx.recv() else { break };
        // SAFETY: dup2 onto the runner's own fd, which it closed before reporting idle.
        if unsafe { libc::dup2(stream.as_raw_fd(), CLIENT_FD_BASE + index as i32) } < 0 {
            let _ = send_frame(
                &mut stream,
                frame::ERROR,
                b"error: the server cannot hand the connection on",
            );
            let _ = idle_tx.send(index);
            continue;
        }
        drop(stream);
        if jobs[index]
            .send(Job {
                target,
                key,
                request,
            })
            .is_err()
        {
            break;
        }
    }
    Ok(())
}

/// Checks what `vmm run`'s command line would have checked: a request comes from any local
/// process, not necessarily from `vmm run --via`.
pub fn check_request(request: &Request) -> Result<(), String> {
    if let Some(arg) = request.args.iter().find(|a| a.contains('\0')) {
        return Err(format!("error: argument {arg:?} contains a NUL byte"));
    }
    for entry in &request.env {
        match entry.split_once('=') {
            Some((key, _)) if !key.is_empty() && !entry.contains('\0') => {}
            _ => {
                return Err(format!(
                    "error: invalid environment entry {entry:?} (expected KEY=VALUE)"
                ));
            }
        }
    }
    Ok(())
}

fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .map_err(|e| format!("error: bad request: {e}"))?;
    let len = u32::from_le_bytes(len);
    if len > MAX_REQUEST {
        return Err(format!("error: request of {len} bytes is too large"));
    }
    let mut body = vec![0u8; len as usize];
    stream
        .read_exact(&mut body)
        .map_err(|e| format!("error: bad request: {e}"))?;
    let request: Request =
        serde_json::from_slice(&body).map_err(|e| format!("error: bad request: {e}"))?;
    check_request(&request)?;
    Ok(request)
}

fn resolve(
    targets: &mut BTreeMap<PathBuf, Target>,
    request: &Request,
) -> Result<(PathBuf, Target), String> {
    let key = std::fs::canonicalize(&request.target)
        .map_err(|e| format!("error: cannot read {}: {e}", request.target.display()))?;
    let target = match targets.get(&key) {
        Some(target) => target.clone(),
        None => {
            let target = load_target(&key)?;
            targets.insert(key.clone(), target.clone());
            target
        }
    };
    // The client chooses the RAM of an image's VM: check it like `vmm run --mem`.
    if let Target::Image(image) = &target {
        crate::check_mem_size(request.mem_size).map_err(|e| format!("error: {e}"))?;
        image
            .check_fits(request.mem_size)
            .map_err(|e| format!("error: {e}"))?;
    }
    Ok((key, target))
}

fn load_target(key: &Path) -> Result<Target, String> {
    let target = if Snapshot::peek_mem_size(key).is_ok() {
        let snapshot = Arc::new(
            Snapshot::open(key).map_err(|e| format!("error: {}", crate::error_chain(&e)))?,
        );
        let layout = Arc::new(snapshot.layout());
        Target::Snapshot(snapshot, layout)
    } else {
        let image =
            Image::from_file(key).map_err(|e| format!("error: {}", crate::error_chain(&e)))?;
        Target::Image(Arc::new(image))
    };
    Ok(target)
}

fn refill(
    pool: &Pool,
    kvm: &Arc<kvm_ioctls::Kvm>,
    pooled: &[(PathBuf, Arc<Snapshot>)],
    seccomp: bool,
) {
    if seccomp {
        let _ = sandbox::confine_this_thread_as(Profile::FleetWorker);
    }
    loop {
        let mut ready = pool.ready.lock().unwrap_or_else(|e| e.into_inner());
        let short = pooled
            .iter()
            .find(|(key, _)| ready.get(key).is_some_and(|q| q.len() < pool.wanted));
        let Some((key, snapshot)) = short else {
            drop(pool.refill.wait(ready).unwrap_or_else(|e| e.into_inner()));
            continue;
        };
        drop(ready);
        if let Ok(shell) = prepare_snapshot_shell(kvm, snapshot) {
            ready = pool.ready.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(queue) = ready.get_mut(key) {
                queue.push_back(shell);
            }
        } else {
            // Creating VMs fails (out of memory or fds): try again later, never spin.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn prepare_snapshot_shell(
    kvm: &Arc<kvm_ioctls::Kvm>,
    snapshot: &Snapshot,
) -> Result<VmShell, String> {
    let ram = GuestRam::new(snapshot.mem_size).map_err(|e| e.to_string())?;
    snapshot
        .map_into_with(&ram, true)
        .map_err(|e| e.to_string())?;
    VmShell::create_with(Arc::clone(kvm), ram, &mut Timeline::default()).map_err(|e| e.to_string())
}

fn runner(
    index: usize,
    jobs: &mpsc::Receiver<Job>,
    idle: &mpsc::Sender<usize>,
    pool: &Pool,
    kvm: &Arc<kvm_ioctls::Kvm>,
    deadlines: &DeadlineService,
    seccomp: bool,
) {
    let client_fd = CLIENT_FD_BASE + index as i32;
    if seccomp && sandbox::confine_this_thread_as(Profile::ServeWorker { client_fd }).is_err() {
        return;
    }
    while let Ok(job) = jobs.recv() {
        let vm = serve_one(job, client_fd, pool, kvm, deadlines, seccomp);
        // SAFETY: the connection's fd is ours until we report idle; closing it ends the reply.
        unsafe { libc::close(client_fd) };
        if idle.send(index).is_err() {
            break;
        }
        // The VM's teardown and the pool's refill happen after the client has its answer.
        drop(vm);
        pool.request_done();
    }
}

/// Runs one request; returns the VM so that its teardown happens after the reply.
fn serve_one(
    job: Job,
    fd: i32,
    pool: &Pool,
    kvm: &Arc<kvm_ioctls::Kvm>,
    deadlines: &DeadlineService,
    seccomp: bool,
) -> Option<Vm> {
    let name = crate::fleet::group_name(&job.request.target);
    let config = VmConfig {
        mem_size: job.request.mem_size,
        timeout: job.request.timeout_ms.map(Duration::from_millis),
        args: std::iter::once(name)
            .chain(job.request.args.iter().cloned())
            .collect(),
        env: job.request.env.clone(),
        seccomp,
        debug_blocked_syscall: false,
        max_output: job.request.max_output,
        snapshot: false,
    };
    let built = match &job.target {
        Target::Snapshot(snapshot, layout) => {
            let shell = match pool.take(&job.key) {
                Some(shell) => Ok(shell),
                None => prepare_snapshot_shell(kvm, snapshot),
            };
            shell.and_then(|shell| {
                Vm::from_snapshot(
                    shell,
                    snapshot,
                    Arc::clone(layout),
                    &config,
                    Timeline::default(),
                )
                .map_err(|e| crate::error_chain(&e))
            })
        }
        Target::Image(image) => {
            let config = VmConfig {
                mem_size: job.request.mem_size,
                ..config.clone()
            };
            Vm::new_with(
                Arc::clone(kvm),
                Arc::clone(image),
                &config,
                Timeline::default(),
            )
            .map_err(|e| crate::error_chain(&e))
        }
    };
    let mut out = FdWriter(fd);
    let mut vm = match built {
        Ok(vm) => vm,
        Err(why) => {
            let _ = send_frame(&mut out, frame::ERROR, format!("error: {why}").as_bytes());
            return None;
        }
    };
    let console = Console {
        stdout: Box::new(FrameWriter {
            fd,
            kind: frame::STDOUT,
        }),
        stderr: Box::new(FrameWriter {
            fd,
            kind: frame::STDERR,
        }),
    };
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    let watchdog = config.timeout.map(|t| deadlines.watch(t, me));
    let status = match vm.run(console, watchdog) {
        Ok(report) => {
            match &report.outcome {
                Outcome::Crashed(text) => {
                    let _ = send_frame(&mut out, frame::STDERR, format!("vmm: {text}").as_bytes());
                }
                Outcome::TimedOut(limit) => {
                    let text =
                        format!("vmm: guest stopped: it ran longer than --timeout {limit:?}\n");
                    let _ = send_frame(&mut out, frame::STDERR, text.as_bytes());
                }
                Outcome::Exited(_) => {}
            }
            report.outcome.exit_status()
        }
        Err(err) => {
            let _ = send_frame(
                &mut out,
                frame::ERROR,
                format!("error: {}", crate::error_chain(&err)).as_bytes(),
            );
            return Some(vm);
        }
    };
    let _ = send_frame(&mut out, frame::EXIT, &status.to_le_bytes());
    Some(vm)
}

/// Writes to a raw fd (the runner's client connection) with `write(2)`.
struct FdWriter(i32);

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: writing our own buffer to an fd this thread owns for the request.
        let n = unsafe { libc::write(self.0, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Console output as frames of one kind.
struct FrameWriter {
    fd: i32,
    kind: u8,
}

impl Write for FrameWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A client that went away must not stop the guest: its output is dropped.
        let _ = send_frame(&mut FdWriter(self.fd), self.kind, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends one frame in one write.
pub fn send_frame(out: &mut impl Write, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(5 + payload.len());
    bytes.push(kind);
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(payload);
    out.write_all(&bytes)
}

/// `vmm run --via SOCKET`: sends `request`, relays the guest's stdout and stderr to ours, and
/// returns the exit status (125 when the server could not run the request).
pub fn run_via(socket: &Path, request: &Request) -> Result<i32, String> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach vmm serve at {}: {e}", socket.display()))?;
    let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    let mut message = (body.len() as u32).to_le_bytes().to_vec();
    message.extend_from_slice(&body);
    stream
        .write_all(&message)
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    loop {
        let mut head = [0u8; 5];
        stream.read_exact(&mut head).map_err(|_| {
            "the server closed the connection before the guest's exit status".to_owned()
        })?;
        let len = u32::from_le_bytes(head[1..5].try_into().unwrap());
        if len > 64 << 20 {
            return Err(format!("the server sent a frame of {len} bytes"));
        }
        let mut payload = vec![0u8; len as usize];
        stream
            .read_exact(&mut payload)
            .map_err(|e| format!("truncated reply: {e}"))?;
        match head[0] {
            frame::STDOUT => {
                let _ = stdout.write_all(&payload).and_then(|()| stdout.flush());
            }
            frame::STDERR => {
                let _ = stderr.write_all(&payload);
            }
            frame::EXIT if payload.len() == 4 => {
                return Ok(i32::from_le_bytes(payload.try_into().unwrap()));
            }
            frame::ERROR => {
                let text = String::from_utf8_lossy(&payload);
                return Err(text.strip_prefix("error: ").unwrap_or(&text).to_owned());
            }
            other => return Err(format!("the server sent an unknown frame kind {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(args: &[&str], env: &[&str]) -> Request {
        Request {
            target: PathBuf::from("/x"),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            env: env.iter().map(|s| (*s).to_owned()).collect(),
            timeout_ms: None,
            max_output: 1 << 20,
            mem_size: 16 << 20,
        }
    }

    #[test]
    fn test_check_request_refuses_what_the_command_line_would() {
        assert!(check_request(&request(&["a", "b c"], &["K=V", "EMPTY="])).is_ok());
        assert!(check_request(&request(&["a\0b"], &[])).is_err());
        assert!(check_request(&request(&[], &["NOEQUALS"])).is_err());
        assert!(check_request(&request(&[], &["=value"])).is_err());
        assert!(check_request(&request(&[], &["K=v\0"])).is_err());
    }
}
