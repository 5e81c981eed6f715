//! The server: an acceptor thread that reads requests and resolves their targets, `workers`
//! runner threads that each run one request at a time, and the pool's refill thread. Runners
//! and the refill thread are sandboxed; a runner may write only to stdout, stderr and the one
//! fd ([`CLIENT_FD_BASE`] + its index) where the acceptor puts each client connection with
//! `dup2`. No VM ever runs a second request.

use super::pool::{self, Pool};
use super::wire::{self, Request, frame, send_frame};
use super::{ServeConfig, ServeError};
use crate::launch::{self, Target, TargetKind};
use crate::report::Timeline;
use crate::sandbox::{self, Profile};
use crate::vm::{self, Console, DeadlineService, Vm, VmConfig};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

/// Runner `i` finds its client's connection at this fd plus `i`.
pub const CLIENT_FD_BASE: i32 = 900;

struct Job {
    target: Target,
    key: PathBuf,
    request: Request,
}

/// Runs the server until the process is killed.
pub fn serve(config: &ServeConfig) -> Result<(), ServeError> {
    let kvm = vm::open_kvm()?;
    let mut targets: BTreeMap<PathBuf, Target> = BTreeMap::new();
    let mut pooled = Vec::new();
    for path in &config.snapshots {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        let target = Target::open(path)?;
        if !matches!(target.kind(), TargetKind::Snapshot(_)) {
            return Err(ServeError::NotASnapshot(path.clone()));
        }
        targets.insert(key.clone(), target.clone());
        pooled.push((key, target));
    }
    let _ = std::fs::remove_file(&config.socket);
    let listener = UnixListener::bind(&config.socket).map_err(|source| ServeError::Listen {
        path: config.socket.clone(),
        source,
    })?;
    let pool = Arc::new(Pool::new(
        pooled.iter().map(|(k, _)| k.clone()),
        config.pool,
    ));
    let deadlines = Arc::new(DeadlineService::start(config.seccomp));
    {
        let (pool, kvm, seccomp) = (Arc::clone(&pool), Arc::clone(&kvm), config.seccomp);
        std::thread::Builder::new()
            .name("refill".into())
            .spawn(move || pool.refill(&kvm, &pooled, seccomp))
            .map_err(ServeError::Spawn)?;
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
            .map_err(ServeError::Spawn)?;
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
        let limit = config.max_timeout.as_millis().min(u128::from(u64::MAX)) as u64;
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
                b"the server cannot hand the connection on",
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

/// The VM settings of a request: what `vmm run`'s command line would have given.
fn vm_config(request: &Request, seccomp: bool) -> VmConfig {
    VmConfig {
        mem_size: request.mem_size,
        timeout: request.timeout_ms.map(Duration::from_millis),
        args: request.args.clone(),
        env: request.env.clone(),
        seccomp,
        max_output: request.max_output,
        ..VmConfig::default()
    }
}

fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .map_err(|e| format!("bad request: {e}"))?;
    let len = u32::from_le_bytes(len);
    if len > wire::MAX_REQUEST {
        return Err(format!("request of {len} bytes is too large"));
    }
    let mut body = vec![0u8; len as usize];
    stream
        .read_exact(&mut body)
        .map_err(|e| format!("bad request: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("bad request: {e}"))
}

fn resolve(
    targets: &mut BTreeMap<PathBuf, Target>,
    request: &Request,
) -> Result<(PathBuf, Target), String> {
    let key = std::fs::canonicalize(&request.target)
        .map_err(|e| format!("cannot read {}: {e}", request.target.display()))?;
    let target = match targets.get(&key) {
        Some(target) => target.clone(),
        None => {
            let target = Target::open(&key).map_err(|e| crate::error_chain(&e))?;
            targets.insert(key.clone(), target.clone());
            target
        }
    };
    // A request comes from any local process: check it as `vmm run`'s command line would.
    launch::check(&target, &vm_config(request, false)).map_err(|e| crate::error_chain(&e))?;
    Ok((key, target))
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
    let config = vm_config(&job.request, seccomp);
    let built = match job.target.kind() {
        TargetKind::Snapshot(_) => {
            let shell = match pool.take(&job.key) {
                Some(shell) => Ok(shell),
                None => pool::prepare_shell(kvm, &job.target),
            };
            shell.and_then(|shell| launch::finish(shell, &job.target, &config, Timeline::default()))
        }
        TargetKind::Image(_) => launch::build(kvm, &job.target, &config, Timeline::default()),
    };
    let mut out = FdWriter(fd);
    let mut vm = match built {
        Ok(vm) => vm,
        Err(err) => {
            let why = crate::error_chain(&err);
            let _ = send_frame(&mut out, frame::ERROR, why.as_bytes());
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
            if let Some(text) = report.outcome.message() {
                let _ = send_frame(&mut out, frame::STDERR, text.as_bytes());
            }
            report.outcome.exit_status()
        }
        Err(err) => {
            let why = crate::error_chain(&err);
            let _ = send_frame(&mut out, frame::ERROR, why.as_bytes());
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
