//! The server: start-up, the dispatcher and the runners.
//!
//! Threads: the acceptor (reads requests, see `acceptor`), the dispatcher (opens targets,
//! hands connections to runners), `workers` runners (each runs one request at a time), the
//! pool's refill, the deadline watchdog and the log writer. Runners, the refill, the watchdog
//! and the log writer are confined by seccomp before they touch any request, and the server
//! refuses to start if one cannot be; a runner may send only on its own client slot (see
//! `slots`). A VM runs a second request only after `vm::recycle` has returned it to a fresh
//! VM's state (a pooled snapshot's VM whose guest exited cleanly; never with `--no-reuse`);
//! any other VM is destroyed after its request.
//!
//! Start-up checks what the server will need before it holds anything: its settings, then the
//! open-files limit (raised to what the pool, runners, connections and cache may hold at once,
//! or a refusal naming the numbers), then the snapshots, then the socket path (see `socket`).
//! When the pool is full it prints one line, `listening on PATH (...)`; then, unless quiet, one
//! line per request.
//!
//! What can still hold things up, by design: the dispatcher reads target files (at most
//! [`MAX_CACHED_TARGETS`]'s worth are kept), so a file on a filesystem that hangs (a dead NFS
//! server) holds up dispatching; `--allow` keeps targets to directories the operator trusts.

use super::acceptor::{Acceptor, MAX_PENDING, MAX_QUEUED, Received};
use super::log::Log;
use super::pool::{self, Pool};
use super::slots::{self, REPLY_GRACE, Reply, Slots};
use super::taps::TapPolicy;
use super::targets::{FileId, MAX_CACHED_TARGETS, Targets};
use super::wire::{Request, frame};
use super::{ServeConfig, ServeError};
use crate::devices::{DeviceConfig, StdinSource, Volume, VolumeRoots, VolumeSpec};
use crate::launch::{self, Target, TargetKind};
use crate::net::{NetSpec, Tap, TapSource};
use crate::report::{Outcome, Timeline};
use crate::sandbox::{self, Grants, Profile};
use crate::vm::{self, Console, DeadlineService, Vm, VmConfig};
use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// Most runner threads.
pub const MAX_WORKERS: usize = 256;
/// Descriptors beyond those counted one by one: stdio, `/dev/kvm`, the listener, `/dev/null`,
/// the refill's VM in the making, a target being opened, the process's own.
const OTHER_FDS: u64 = 64;
/// How long start-up waits for the pool to fill before it says it is listening anyway.
const POOL_FILL_WAIT: Duration = Duration::from_secs(30);

/// What the dispatcher hears.
pub(crate) enum Event {
    /// A complete request from the acceptor.
    Request(Received),
    /// A runner has sent its reply: its slot may be released and it may take another job.
    Done {
        /// Which runner.
        runner: usize,
    },
}

/// One request for a runner; its connection is in the runner's slot.
struct Job {
    target: Target,
    pooled: Option<FileId>,
    request: Request,
    timeout: Duration,
    /// The request's volumes, opened beneath the server's `--volume-root`s.
    volumes: Vec<Volume>,
    /// The request's network device: its settings, and the tap the dispatcher attached
    /// (moved into the runner's tap slot before the job is handed on).
    net: Option<(NetSpec, Option<Tap>)>,
}

impl Job {
    /// The VM settings of the runner on `slot` (and `tap_slot`): what `vmm run`'s command line
    /// would have given, with the client's stdin (which follows its request on the
    /// connection, now at `slot`), the request's volumes and its tap (now at `tap_slot`).
    fn runner_config(&self, seccomp: bool, slot: RawFd, tap_slot: Option<RawFd>) -> VmConfig {
        let mut config = self.vm_config(seccomp);
        let net = match (&self.net, tap_slot) {
            (Some((spec, _)), Some(tap_slot)) => {
                let name = match &spec.tap {
                    TapSource::Name(name) => name.as_str(),
                    TapSource::Fd(_) => "",
                };
                // SAFETY: the tap slot is this runner's for the server's whole life (`Slots`);
                // the dispatcher put this request's tap there and replaces it only after the
                // runner reports the request done, when its guest no longer runs.
                Some(spec.with_tap(unsafe { Tap::in_slot(tap_slot, name) }))
            }
            _ => None,
        };
        config.devices = DeviceConfig {
            stdin: if self.request.stdin {
                StdinSource::Stream(slot)
            } else {
                StdinSource::Empty
            },
            volumes: self.volumes.clone(),
            net,
        };
        config
    }

    /// The VM settings: what `vmm run`'s command line would have given.
    fn vm_config(&self, seccomp: bool) -> VmConfig {
        VmConfig {
            mem_size: self.request.mem_size,
            timeout: Some(self.timeout),
            args: self.request.args.clone(),
            env: self.request.env.clone(),
            seccomp,
            max_output: self.request.max_output,
            ..VmConfig::default()
        }
    }
}

/// Runs the server until the process is killed.
pub fn serve(config: &ServeConfig) -> Result<(), ServeError> {
    check_config(config)?;
    let taps = TapPolicy::new(&config.allow_taps).map_err(ServeError::BadConfig)?;
    let (needed, why) = fds_needed(config);
    ensure_fd_limit(needed, why)?;
    let kvm = vm::open_kvm()?;
    let allow = config
        .allow
        .iter()
        .map(|dir| canonical_dir(dir))
        .collect::<Result<Vec<_>, _>>()?;
    let volume_roots = VolumeRoots::open(&config.volume_roots)?;
    let mut targets = Targets::new(allow, config.cache_bytes);
    let mut pooled: Vec<(FileId, Target)> = Vec::new();
    for path in &config.snapshots {
        let (id, target) = targets.pin(path)?;
        if !matches!(target.kind(), TargetKind::Snapshot(_)) {
            return Err(ServeError::NotASnapshot(path.clone()));
        }
        if pooled.iter().all(|(known, _)| *known != id) {
            pooled.push((id, target));
        }
    }
    let slots = Slots::reserve(config.workers, taps.any()).map_err(ServeError::Slots)?;
    let listener = super::socket::claim(&config.socket, config.socket_mode)?;
    let _claimed = ClaimedPath::new(&config.socket);
    listener
        .set_nonblocking(true)
        .map_err(|source| super::SocketError::Io {
            what: "listen on",
            path: config.socket.clone(),
            source,
        })?;
    let seccomp = config.seccomp;
    let confined = |profile| seccomp.then_some(profile);
    let (log, writer) = Log::new(config.quiet);
    if let Some(writer) = writer {
        spawn("log".into(), confined(Profile::Logger), move || {
            writer.run()
        })?;
    }
    let mut recyclers = BTreeMap::new();
    let mut first_vms = Vec::new();
    if config.reuse && config.pool > 0 {
        // Made here, before any thread is confined: reading the MSR list takes /dev/kvm.
        for (id, target) in &pooled {
            let config = VmConfig {
                mem_size: target.mem_size(0),
                ..VmConfig::default()
            };
            match launch::recycler(&kvm, target, &config, true) {
                Ok((recycler, shell)) => {
                    recyclers.insert(*id, recycler);
                    first_vms.push((*id, shell));
                }
                Err(err) => log.line(format!(
                    "serve: VMs of {} will not be reused: {}",
                    target.path().display(),
                    crate::error_chain(&err)
                )),
            }
        }
    }
    let reuse = !recyclers.is_empty();
    let pool = Arc::new(Pool::new(
        pooled.iter().map(|(id, _)| *id),
        config.pool,
        recyclers,
    ));
    for (id, shell) in first_vms {
        pool.put(&id, pool::ReadyVm { shell, served: 0 });
    }
    let deadlines = Arc::new(DeadlineService::start(seccomp).map_err(crate::vm::VmError::from)?);
    {
        let (pool, kvm, pooled, log) = (
            Arc::clone(&pool),
            Arc::clone(&kvm),
            pooled.clone(),
            log.clone(),
        );
        spawn(
            "refill".into(),
            confined(Profile::FleetWorker(Grants {
                reuse,
                ..Grants::default()
            })),
            move || pool.refill(&kvm, &pooled, &log),
        )?;
    }
    let (events, events_in) = mpsc::channel::<Event>();
    let mut runners = Vec::new();
    for index in 0..config.workers {
        let (jobs, jobs_in) = mpsc::channel::<Job>();
        runners.push(jobs);
        let runner = Runner {
            index,
            slot: slots.fd(index),
            tap_slot: slots.tap_fd(index),
            pool: Arc::clone(&pool),
            kvm: Arc::clone(&kvm),
            deadlines: Arc::clone(&deadlines),
            events: events.clone(),
            seccomp,
            log: log.clone(),
        };
        let profile = Profile::ServeWorker {
            client_slot: runner.slot,
            // Requests may share directories only beneath the server's volume roots.
            // The runner's guests read and write their tap in its tap slot, and nowhere else.
            grants: Grants {
                volumes: !config.volume_roots.is_empty(),
                taps: runner.tap_slot.into_iter().collect(),
                reuse,
                ..Grants::default()
            },
        };
        spawn(format!("runner-{index}"), confined(profile), move || {
            runner.run(&jobs_in)
        })?;
    }
    let queued = Arc::new(AtomicUsize::new(0));
    let dispatcher = Dispatcher {
        slots,
        runners,
        targets,
        volume_roots,
        taps,
        queued: Arc::clone(&queued),
        log: log.clone(),
        max_timeout: config.max_timeout,
    };
    spawn("dispatcher".into(), None, move || {
        dispatcher.run(&events_in)
    })?;
    let acceptor = Acceptor {
        listener,
        request_timeout: config.request_timeout,
        dispatcher: events,
        queued,
        log,
    };
    spawn("acceptor".into(), None, move || acceptor.run())?;
    let ready = pool.wait_until_full(POOL_FILL_WAIT);
    // Not eprintln!: a stderr that cannot be written (a full disk) must not stop the server.
    let ready_line = format!(
        "listening on {} ({})\n",
        config.socket.display(),
        describe_pool(config, &pooled, ready)
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), ready_line.as_bytes());
    // The other threads serve until the process is killed (or one of them stops it).
    loop {
        std::thread::park();
    }
}

fn check_config(config: &ServeConfig) -> Result<(), ServeError> {
    if !(1..=MAX_WORKERS).contains(&config.workers) {
        return Err(ServeError::BadConfig(format!(
            "--workers {} is out of range (1 to {MAX_WORKERS})",
            config.workers
        )));
    }
    if config.socket_mode > 0o777 {
        return Err(ServeError::BadConfig(format!(
            "--socket-mode {:o} is not a permission mode (at most 777)",
            config.socket_mode
        )));
    }
    if config.socket_mode & 0o077 != 0 && config.allow.is_empty() {
        return Err(ServeError::OpenSocketWithoutAllow {
            mode: config.socket_mode,
        });
    }
    for (flag, value) in [
        ("--max-timeout", config.max_timeout),
        ("--request-timeout", config.request_timeout),
    ] {
        if value.is_zero() || value > crate::size::MAX_DURATION {
            return Err(ServeError::BadConfig(format!(
                "{flag} {value:?} is out of range"
            )));
        }
    }
    Ok(())
}

/// The descriptors the server may hold at once, and where the number comes from.
fn fds_needed(config: &ServeConfig) -> (u64, String) {
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let snapshots = count(config.snapshots.len());
    let pool = count(config.pool);
    let workers = count(config.workers);
    let connections = count(MAX_PENDING + MAX_QUEUED);
    let cached = count(MAX_CACHED_TARGETS);
    // Each pooled VM: VM and vCPU; each snapshot kept: its pages' memfd.
    let pooled = snapshots.saturating_mul(pool).saturating_mul(2);
    // Each runner: its slot, the VM and vCPU of the request it runs, and (when the server
    // shares directories) its guest's volumes and open files, with one parent directory
    // being resolved.
    let input = if config.volume_roots.is_empty() {
        0
    } else {
        count(crate::devices::volumes::MAX_VOLUMES) + u64::from(abi::fs::MAX_OPEN_FILES) + 1
    };
    // With taps: the runner's tap slot.
    let tap = u64::from(!config.allow_taps.is_empty());
    let per_runner = 3 + input + tap;
    let running = workers.saturating_mul(per_runner);
    let needed = [pooled, snapshots, running, connections, cached, OTHER_FDS]
        .into_iter()
        .fold(0u64, u64::saturating_add);
    let why = format!(
        "{snapshots} snapshots × {pool} ready VMs × 2, {workers} runners × {per_runner}, \
         {connections} connections, {cached} cached targets, {OTHER_FDS} more"
    );
    (needed, why)
}

/// Raises the soft open-files limit to `needed`, or says why it cannot be.
fn ensure_fd_limit(needed: u64, why: String) -> Result<(), ServeError> {
    let failed = |source| ServeError::SetFdLimit { needed, source };
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into our variable.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(failed(std::io::Error::last_os_error()));
    }
    if limit.rlim_cur >= needed {
        return Ok(());
    }
    if limit.rlim_max < needed {
        return Err(ServeError::FdLimit {
            needed,
            why,
            hard: limit.rlim_max,
        });
    }
    limit.rlim_cur = needed;
    // SAFETY: setrlimit reads one valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(failed(std::io::Error::last_os_error()));
    }
    Ok(())
}

fn canonical_dir(dir: &Path) -> Result<PathBuf, ServeError> {
    let failed = |source| ServeError::Allow {
        path: dir.to_owned(),
        source,
    };
    let canonical = std::fs::canonicalize(dir).map_err(failed)?;
    if !canonical.is_dir() {
        return Err(failed(std::io::Error::from(
            std::io::ErrorKind::NotADirectory,
        )));
    }
    Ok(canonical)
}

fn describe_pool(config: &ServeConfig, pooled: &[(FileId, Target)], ready: usize) -> String {
    let workers = format!("{} workers", config.workers);
    if pooled.is_empty() || config.pool == 0 {
        return format!("no pool; {workers}");
    }
    let names: Vec<String> = pooled
        .iter()
        .map(|(_, t)| t.path().display().to_string())
        .collect();
    let wanted = pooled.len() * config.pool;
    let filling = if ready < wanted {
        format!(": {ready} of {wanted} VMs ready so far")
    } else {
        String::new()
    };
    format!(
        "pool {} of {}{filling}; {workers}",
        config.pool,
        names.join(", ")
    )
}

/// Starts a thread, confined as `profile` before it runs `body`; fails if it cannot be.
///
/// None of the server's threads ever ends: if one does (a bug), the whole server stops at once
/// with status 125, rather than go on with a runner, the dispatcher or the acceptor missing.
fn spawn(
    name: String,
    profile: Option<Profile>,
    body: impl FnOnce() + Send + 'static,
) -> Result<(), ServeError> {
    let (confined, result) = mpsc::channel();
    let thread = name.clone();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let sandboxed = profile
                .as_ref()
                .map_or(Ok(()), sandbox::confine_this_thread_as);
            let ok = sandboxed.is_ok();
            let _ = confined.send(sandboxed);
            if ok {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
                stop_server(&thread);
            }
        })
        .map_err(ServeError::Spawn)?;
    match result.recv() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(ServeError::Sandbox {
            thread: name,
            source,
        }),
        Err(_) => Err(ServeError::Spawn(std::io::Error::other(format!(
            "the {name} thread ended at start"
        )))),
    }
}

/// Ends the process because the server's `thread` ended: one line on stderr, status 125.
/// Only `write` and `exit_group`, which every sandbox profile allows.
fn stop_server(thread: &str) {
    let text = format!("vmm serve: internal error: the {thread} thread stopped; exiting\n");
    // SAFETY: a write of our own buffer to stderr, then _exit: no Rust state is used after.
    unsafe {
        libc::write(libc::STDERR_FILENO, text.as_ptr().cast(), text.len());
        libc::_exit(abi::exit_status::VMM_ERROR);
    }
}

/// Removes the socket path when the server stops (only if it is still the socket it made).
struct ClaimedPath {
    path: PathBuf,
    identity: Option<(u64, u64)>,
}

impl ClaimedPath {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            identity: std::fs::symlink_metadata(path)
                .ok()
                .map(|m| (m.dev(), m.ino())),
        }
    }
}

impl Drop for ClaimedPath {
    fn drop(&mut self) {
        let now = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if now.is_some() && now == self.identity {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The dispatcher: opens each request's target and hands it to an idle runner.
struct Dispatcher {
    slots: Slots,
    runners: Vec<mpsc::Sender<Job>>,
    targets: Targets,
    volume_roots: VolumeRoots,
    taps: TapPolicy,
    queued: Arc<AtomicUsize>,
    log: Log,
    max_timeout: Duration,
}

impl Dispatcher {
    /// Queues requests and hands each to the next idle runner. A request's target is opened
    /// only then, so that at most one loaded target per runner is held beside the cache,
    /// however many requests wait.
    fn run(mut self, events: &mpsc::Receiver<Event>) {
        let mut idle: VecDeque<usize> = (0..self.runners.len()).collect();
        let mut waiting: VecDeque<Received> = VecDeque::new();
        while let Ok(event) = events.recv() {
            match event {
                Event::Done { runner } => {
                    self.slots.release(runner);
                    idle.push_back(runner);
                }
                Event::Request(received) => waiting.push_back(received),
            }
            while let Some(&runner) = idle.front() {
                let Some(received) = waiting.pop_front() else {
                    break;
                };
                self.queued.fetch_sub(1, Ordering::SeqCst);
                if self.hand_over(runner, received) {
                    idle.pop_front();
                }
            }
        }
    }

    /// Prepares `received` and hands it to `runner`; false if it was answered here instead.
    fn hand_over(&mut self, runner: usize, received: Received) -> bool {
        let Received {
            connection,
            request,
        } = received;
        if hung_up(&connection) {
            // Nobody would read the reply: the guest is not run for nobody.
            let target = request.target.display();
            self.log.line(format!(
                "{target}: dropped: the client hung up before its turn"
            ));
            return false;
        }
        let mut job = match self.prepare(request) {
            Ok(job) => job,
            Err((target, why)) => {
                slots::refuse(connection.as_fd(), &why);
                self.log
                    .line(format!("{}: refused: {why}", target.display()));
                return false;
            }
        };
        let handed = self.slots.hand(runner, connection.as_fd()).and_then(|()| {
            // The tap moves into the runner's tap slot; the dispatcher's descriptor closes.
            match job.net.as_mut().and_then(|(_, tap)| tap.take()) {
                Some(tap) => self.slots.hand_tap(runner, tap.as_fd()),
                None => Ok(()),
            }
        });
        if let Err(err) = handed {
            let why = format!("the server cannot hand the connection on: {err}");
            slots::refuse(connection.as_fd(), &why);
            self.log
                .line(format!("{}: {why}", job.target.path().display()));
            self.slots.release(runner);
            return false;
        }
        drop(connection);
        if self.runners[runner].send(job).is_err() {
            // Runners never return (the server stops if one does).
            self.slots.release(runner);
        }
        true
    }

    /// Opens and checks the request's target; on failure, the target and why.
    fn prepare(&mut self, request: Request) -> Result<Job, (PathBuf, String)> {
        let fail = |why: String| (request.target.clone(), why);
        let resolved = self
            .targets
            .resolve(&request.target)
            .map_err(|e| fail(crate::error_chain(&e)))?;
        if request.timeout_ms == Some(0) {
            // As on the command line: a zero timeout is a mistake, not a request.
            return Err(fail("--timeout must be more than 0".into()));
        }
        let timeout = request.timeout_ms.map_or(self.max_timeout, |ms| {
            Duration::from_millis(ms).min(self.max_timeout)
        });
        let volumes = open_volumes(&self.volume_roots, &request).map_err(fail)?;
        let mut job = Job {
            target: resolved.target,
            pooled: resolved.pooled,
            request,
            timeout,
            volumes,
            net: None,
        };
        // A request comes from any local process: check it as `vmm run`'s command line would.
        launch::check(&job.target, &job.vm_config(false))
            .map_err(|e| (job.request.target.clone(), crate::error_chain(&e)))?;
        // Last: the tap stays attached (and busy for anyone else) only for a request that
        // passed every other check.
        if let Some(text) = &job.request.net {
            let (spec, tap) = self
                .taps
                .attach(text)
                .map_err(|why| (job.request.target.clone(), why))?;
            job.net = Some((spec, Some(tap)));
        }
        Ok(job)
    }
}

/// Opens a request's volumes beneath the server's shared directories (here, before the
/// sandboxed runner gets the request).
fn open_volumes(roots: &VolumeRoots, request: &Request) -> Result<Vec<Volume>, String> {
    let specs = request
        .volumes
        .iter()
        .map(|text| VolumeSpec::parse(text))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|specs| roots.open_all(&specs));
    specs.map_err(|e| crate::error_chain(&e))
}

/// Whether the client closed its connection (both ways: a client that only shut down its
/// sending side still waits for its reply).
fn hung_up(connection: &UnixStream) -> bool {
    let mut poll = libc::pollfd {
        fd: connection.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; a zero timeout never waits.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready > 0 && poll.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// Where the VM of a request came from.
#[derive(Clone, Copy)]
enum Origin {
    /// Created for it.
    Cold,
    /// From the pool: a fresh VM (0), or one reused after that many requests.
    Pooled { served: u32 },
}

/// How one request ended, for the log.
enum Served {
    /// The guest ran: its exit status, where its VM came from, and whether the guest ended
    /// with its exit hypercall (only such VMs may be reused).
    Ran {
        status: i32,
        origin: Origin,
        exited: bool,
    },
    /// It never ran, or the VMM failed it.
    Failed(String),
}

/// A runner thread: one request at a time, answered on its slot.
struct Runner {
    index: usize,
    slot: RawFd,
    /// Where the dispatcher puts the tap of a request with a network device.
    tap_slot: Option<RawFd>,
    pool: Arc<Pool>,
    kvm: Arc<kvm_ioctls::Kvm>,
    deadlines: Arc<DeadlineService>,
    events: mpsc::Sender<Event>,
    seccomp: bool,
    log: Log,
}

impl Runner {
    fn run(self, jobs: &mpsc::Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            let started = Instant::now();
            let reply = Reply::new(self.slot, deadline_after(started, job.timeout));
            let (vm, served, taken) = self.serve_one(&job, &reply);
            self.log
                .line(log_line(&job, &served, started.elapsed(), reply.dropped()));
            drop(reply);
            // Only a VM whose guest exited cleanly may be reused.
            let reusable = match (vm, &served) {
                (Some(vm), Served::Ran { exited: true, .. }) => Some(vm),
                _ => None,
            };
            let returning = taken && reusable.is_some() && job.pooled.is_some();
            if let (true, Some(key)) = (returning, job.pooled) {
                self.pool.expect_back(&key);
            }
            if self
                .events
                .send(Event::Done { runner: self.index })
                .is_err()
            {
                break;
            }
            // The VM's reuse or teardown, and the pool's refill, happen after the client has
            // its answer.
            if let Some(key) = job.pooled {
                let served = match &served {
                    Served::Ran {
                        origin: Origin::Pooled { served },
                        ..
                    } => served.saturating_add(1),
                    _ => 1,
                };
                if let Err(why) = self
                    .pool
                    .give_back(&key, reusable, served, taken, returning)
                {
                    self.log.line(format!(
                        "{}: VM not reused: {why}",
                        job.target.path().display()
                    ));
                }
            }
            self.pool.request_done();
        }
    }

    /// Runs one request; returns the VM so that its reuse or teardown happens after the
    /// reply, how the request ended, and whether the VM was taken from the pool.
    fn serve_one(&self, job: &Job, reply: &Reply) -> (Option<Vm>, Served, bool) {
        let config = job.runner_config(self.seccomp, self.slot, self.tap_slot);
        let mut origin = Origin::Cold;
        let mut taken = false;
        let built = match job.target.kind() {
            TargetKind::Snapshot(_) => {
                let shell = match job.pooled.and_then(|id| self.pool.take(&id)) {
                    Some(ready) => {
                        taken = true;
                        origin = Origin::Pooled {
                            served: ready.served,
                        };
                        Ok(ready.shell)
                    }
                    None => pool::prepare_shell(
                        &self.kvm,
                        &job.target,
                        job.pooled.is_some_and(|id| self.pool.reuses(&id)),
                    ),
                };
                shell.and_then(|shell| {
                    launch::finish(shell, &job.target, &config, Timeline::default())
                })
            }
            TargetKind::Image(_) => {
                launch::build(&self.kvm, &job.target, &config, Timeline::default())
            }
        };
        let mut vm = match built {
            Ok(vm) => vm,
            Err(err) => {
                let why = crate::error_chain(&err);
                reply.send(frame::ERROR, why.as_bytes());
                return (None, Served::Failed(why), taken);
            }
        };
        let console = Console {
            stdout: Box::new(reply.writer(frame::STDOUT)),
            stderr: Box::new(reply.writer(frame::STDERR)),
        };
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let watchdog = config.timeout.map(|t| self.deadlines.watch(t, me));
        match vm.run(console, watchdog) {
            Ok(report) => {
                if let Some(text) = report.outcome.message() {
                    reply.send(frame::STDERR, text.as_bytes());
                }
                let status = report.outcome.exit_status();
                reply.send(frame::EXIT, &status.to_le_bytes());
                let exited = matches!(report.outcome, Outcome::Exited(_));
                (
                    Some(vm),
                    Served::Ran {
                        status,
                        origin,
                        exited,
                    },
                    taken,
                )
            }
            Err(err) => {
                let why = crate::error_chain(&err);
                reply.send(frame::ERROR, why.as_bytes());
                (Some(vm), Served::Failed(why), taken)
            }
        }
    }
}

/// When a reply that started at `started` for a guest with `timeout` gives up.
fn deadline_after(started: Instant, timeout: Duration) -> Instant {
    let budget = timeout.saturating_add(REPLY_GRACE);
    started
        .checked_add(budget)
        .or_else(|| started.checked_add(crate::size::MAX_DURATION))
        .unwrap_or(started)
}

fn log_line(job: &Job, served: &Served, took: Duration, dropped: bool) -> String {
    let target = job.target.path().display();
    let dropped = if dropped {
        " (the client stopped reading: output dropped)"
    } else {
        ""
    };
    match served {
        Served::Ran { status, origin, .. } => {
            let vm = match origin {
                Origin::Cold => "cold VM".to_owned(),
                Origin::Pooled { served: 0 } => "pooled VM".to_owned(),
                Origin::Pooled { served } => format!("pooled VM (reused after {served})"),
            };
            format!("{target}: {vm}, exit status {status}, {took:.1?}{dropped}")
        }
        Served::Failed(why) => format!("{target}: failed: {why}{dropped}"),
    }
}
