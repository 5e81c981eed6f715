//! `vmm`: the command line of the flick VMM: clap types, and one small function per
//! subcommand that turns its flags into the library's configuration and its result into an
//! exit status. Every error is one line on stderr (clap's usage errors keep their own text).
//!
//! `#![no_main]`: the VMM enters at C `main` and skips std's runtime set-up (stack guard
//! probing through /proc/self/maps, sigaltstack, ...), about 50 µs of a 1.4 ms boot here.
//! It does itself what it needs of that set-up: ignore SIGPIPE; and it turns an abort (a
//! panic that reaches `main`, an allocation failure) into status 125, so that a VMM failure
//! is never mistaken for a guest crash (134).

#![no_main]

// std's print macros panic when the write fails (a full disk, a closed pipe), and a panic here
// aborts: these, declared before any use, take their place in this file. Output that cannot
// be written to stdout ends the VMM as a shell pipeline would (141 on a closed pipe) or with
// one line on stderr; what cannot be written to stderr has nowhere else to go.
macro_rules! print {
    ($($arg:tt)*) => { write_stdout(format_args!($($arg)*)) };
}
macro_rules! println {
    ($($arg:tt)*) => { write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}
macro_rules! eprint {
    ($($arg:tt)*) => {{ let _ = write!(std::io::stderr(), $($arg)*); }};
}
macro_rules! eprintln {
    ($($arg:tt)*) => {{ let _ = writeln!(std::io::stderr(), $($arg)*); }};
}

/// Writes the VMM's own output (a report, a listing) to stdout, or ends the process.
fn write_stdout(text: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(err) = out.write_fmt(text).and_then(|()| out.flush()) {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("error: cannot write the output: {err}");
        std::process::exit(abi::exit_status::VMM_ERROR);
    }
}

use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use vmm::launch::RunConfig;
use vmm::report::timeline::{self, Timeline};
use vmm::size::{parse_size, parse_timeout};
use vmm::{Console, StdinSource, VmConfig, Volume, VolumeSpec};

const EXIT_STATUS_HELP: &str = "\
Exit status:
  N    the app's own exit code (its low 8 bits)
  101  the app panicked
  124  the guest ran longer than --timeout
  125  the VMM could not start the guest (bad image, bad flag, no KVM, too little memory)
  134  the guest crashed (CPU exception, triple fault, emulation failure, bad hypercall)
  137  gdb killed the guest (--gdb)
  141  the guest's stdout was closed (`vmm run app | head -1`), as SIGPIPE ends a process";

const SERVE_HELP: &str = "\
Who may connect: whoever may write to the socket (--socket-mode, default 600: the server's
user). What a client can make the server read: any file the server's user can read, unless
--allow limits it to some directories. Prints 'listening on SOCKET (...)' once the pool is
full, then one line per request unless --quiet.";

/// A minimal KVM VMM that boots flick images at ring 3.
#[derive(Parser, Debug)]
#[command(name = "vmm", version, after_help = EXIT_STATUS_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum TimelineFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the system calls the sandboxed run loop may make, and why.
    SeccompList,
    /// Keep VMs ready and run requests from `vmm run --via SOCKET` (until killed).
    #[command(after_help = SERVE_HELP)]
    Serve {
        /// The Unix socket to listen on (an existing file is left alone; a stale socket is
        /// replaced).
        #[arg(long)]
        socket: PathBuf,
        /// Permission bits of the socket, in octal; anything beyond 600 needs --allow.
        #[arg(long, default_value = "600", value_parser = parse_mode)]
        socket_mode: u32,
        /// Run only files inside this directory (repeatable; default: any file the server
        /// can read).
        #[arg(long = "allow", value_name = "DIR")]
        allow: Vec<PathBuf>,
        /// Ready VMs kept per snapshot.
        #[arg(long, default_value_t = 4)]
        pool: usize,
        /// A snapshot to keep ready VMs of (repeatable); anything else is served cold.
        #[arg(long = "snapshot", value_name = "FILE")]
        snapshots: Vec<PathBuf>,
        /// Threads running guests (1 to 256).
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// The longest a request may run (also the timeout of requests that give none).
        #[arg(long, default_value = "60s", value_parser = parse_timeout)]
        max_timeout: Duration,
        /// The longest a client may take to send its whole request.
        #[arg(long, default_value = "5s", value_parser = parse_timeout)]
        request_timeout: Duration,
        /// Memory for validated images and snapshots kept between requests (file sizes).
        #[arg(long, default_value = "256M", value_parser = parse_size)]
        cache_size: u64,
        /// No log line per request.
        #[arg(long)]
        quiet: bool,
        /// Destroy every VM after its request, instead of returning a cleanly exited one to
        /// a fresh VM's state and keeping it in the pool.
        #[arg(long)]
        no_reuse: bool,
        /// Run without the seccomp sandbox.
        #[arg(long)]
        no_seccomp: bool,
        /// A directory whose subdirectories requests may share with their guests
        /// (`vmm run --via S --volume DIR:/path`); repeatable. Without one, requests with
        /// volumes are refused.
        #[arg(long = "volume-root", value_name = "DIR")]
        volume_roots: Vec<PathBuf>,
        /// A tap requests may give their guests (`vmm run --via S --net tap=NAME,...`): an
        /// interface name, `*` standing for any characters (e.g. fltap*); repeatable.
        /// Without one, requests with --net are refused.
        #[arg(long = "allow-tap", value_name = "PATTERN")]
        allow_taps: Vec<String>,
    },
    /// Boot an image until its kernel's snapshot point and save the VM to a file.
    #[command(after_help = "Restore with: vmm run --from FILE [-- ARGS...]")]
    Snapshot {
        /// The image.
        image: PathBuf,
        /// The snapshot file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Guest RAM: 4M to 4G, a multiple of 2M.
        #[arg(long, default_value = DEFAULT_MEM, value_parser = parse_size)]
        mem: u64,
        /// Environment while booting to the snapshot point (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<String>,
        /// Console bytes allowed before the snapshot point.
        #[arg(long, default_value = DEFAULT_MAX_OUTPUT, value_parser = parse_size)]
        max_output: u64,
        /// Give up when the guest has not reached its snapshot point after this long.
        #[arg(long, default_value = "60s", value_parser = parse_timeout)]
        timeout: Duration,
        /// Share a host directory while booting to the snapshot point (repeatable; files open
        /// at the snapshot point make it fail: open files are not part of a snapshot).
        #[arg(long = "volume", value_name = "HOST_DIR:GUEST_PATH[:ro]", value_parser = parse_volume)]
        volumes: Vec<VolumeSpec>,
        /// Arguments while booting to the snapshot point.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Boot many instances of an image (or a manifest's mix), each in its own VM, C at a time.
    #[command(
        after_help = "Exit status: 0 when the fleet ran (whatever its guests did), 125 on bad input."
    )]
    Fleet {
        /// The image (not needed with --manifest).
        #[arg(required_unless_present = "manifest")]
        image: Option<PathBuf>,
        /// Instances of IMAGE (at most 100000).
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Worker threads booting instances (1 to 1024).
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// Guest RAM per instance.
        #[arg(long, default_value = DEFAULT_MEM, value_parser = parse_size)]
        mem: u64,
        /// Per-instance timeout (until the guest exits, or parks with --resident; a released
        /// instance gets it again, or 60s without one).
        #[arg(long, value_parser = parse_timeout)]
        timeout: Option<Duration>,
        /// Console bytes allowed per instance.
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        max_output: u64,
        /// Environment for every instance (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<String>,
        /// Share a host directory with every instance (repeatable; a manifest entry's
        /// `volumes` replace these). Instances get an empty stdin unless their manifest entry
        /// names a `stdin` file.
        #[arg(long = "volume", value_name = "HOST_DIR:GUEST_PATH[:ro]", value_parser = parse_volume)]
        volumes: Vec<VolumeSpec>,
        /// Keep every instance alive at once (the image must park, like `idle`), then release
        /// them all: measures density.
        #[arg(long)]
        resident: bool,
        /// A new VM for every instance: without it, a worker runs its next instance of a group
        /// in the VM of one that exited cleanly, returned to a fresh VM's state.
        #[arg(long)]
        no_reuse: bool,
        /// A TOML file of [[vm]] entries (image, count, args, env, mem, timeout, max_output, name,
        /// volumes, stdin, net: an entry's own --net, numbered within the entry).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Print the report as JSON, with every instance's status and output.
        #[arg(long)]
        json: bool,
        /// Run the workers without the seccomp sandbox.
        #[arg(long)]
        no_seccomp: bool,
        /// Write an ELF core file for each crashed instance (the first 16) to this folder, as
        /// GROUP.INDEX.core.
        #[arg(long, value_name = "DIR")]
        cores: Option<PathBuf>,
        /// A network device for every instance (of entries without a net of their own), as
        /// for `vmm run --net`: in the tap name,
        /// `{i}` becomes the instance's number (0, 1, ...), and the address grows by it
        /// (tap=fl{i},ip=10.77.0.10/16: fl0 at 10.77.0.10, fl1 at 10.77.0.11, ...).
        #[arg(long, value_name = "SPEC", value_parser = vmm::net::NetSpec::parse)]
        net: Option<vmm::net::NetSpec>,
        /// Arguments for every instance.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Boot an image and exit with its exit code.
    #[command(after_help = EXIT_STATUS_HELP)]
    Run {
        /// The image (a static ELF built by `cargo xtask build`).
        #[arg(required_unless_present = "from", conflicts_with = "from")]
        image: Option<PathBuf>,
        /// Restore and continue a snapshot made by `vmm snapshot` instead of booting an image
        /// (its RAM size replaces --mem).
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
        /// Have the `vmm serve` listening on this socket run it (same output and status).
        #[arg(long, value_name = "SOCKET")]
        via: Option<PathBuf>,
        /// Guest RAM: 4M to 4G, a multiple of 2M.
        #[arg(long, default_value = DEFAULT_MEM, value_parser = parse_size)]
        mem: u64,
        /// Stop the guest after this long (e.g. 500ms, 2s, 1m); exit status 124.
        #[arg(long, value_parser = parse_timeout)]
        timeout: Option<Duration>,
        /// After the guest exits, print the boot timeline, VM exits and RAM touched on stderr
        /// (`--timeline=json`: as one line of JSON).
        #[arg(long, value_name = "FORMAT", num_args = 0..=1, require_equals = true, default_missing_value = "text")]
        timeline: Option<TimelineFormat>,
        /// Tear the VM down before exiting instead of handing it to a helper process.
        #[arg(long, hide = true)]
        sync_teardown: bool,
        /// Stop the guest (status 134) once it has written this much console output.
        #[arg(long, default_value = DEFAULT_MAX_OUTPUT, value_parser = parse_size)]
        max_output: u64,
        /// Run without the seccomp sandbox (for debugging; prints a warning).
        #[arg(long)]
        no_seccomp: bool,
        /// Make a blocked system call once sandboxed (tests the sandbox's report).
        #[arg(long, hide = true)]
        debug_blocked_syscall: bool,
        /// Panic in the VMM before booting (tests that a VMM failure exits 125).
        #[arg(long, hide = true)]
        debug_panic: bool,
        /// Set an environment variable for the app (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<String>,
        /// Share a host directory with the app at GUEST_PATH (repeatable): read-write, or
        /// read-only with `:ro`. The app can reach nothing outside it.
        #[arg(long = "volume", value_name = "HOST_DIR:GUEST_PATH[:ro]", value_parser = parse_volume)]
        volumes: Vec<VolumeSpec>,
        /// Give the guest a network device on an existing tap:
        /// tap=NAME,ip=ADDR/PREFIX[,gw=ADDR][,mac=MAC][,tx-rate=BYTES] (fd=N instead of
        /// tap=NAME: a tap fd this process inherited). The MAC is random by default; frames
        /// the guest sends beyond tx-rate bytes/s (default 128M) are dropped.
        #[arg(long, value_name = "SPEC", value_parser = vmm::net::NetSpec::parse)]
        net: Option<vmm::net::NetSpec>,
        /// If the guest crashes, write an ELF core file here (`gdb IMAGE FILE` opens it).
        #[arg(long, value_name = "FILE", conflicts_with = "via")]
        core: Option<PathBuf>,
        /// Stop the guest before its first instruction and wait for gdb (`target remote ADDR`)
        /// on ADDR: a loopback HOST:PORT (port 0: any free one) or a Unix socket path. Runs
        /// without the seccomp sandbox and without --timeout.
        #[arg(long, value_name = "ADDR", conflicts_with_all = ["via", "timeout"])]
        gdb: Option<String>,
        /// Arguments for the app.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

#[unsafe(no_mangle)]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: installing SIG_IGN for SIGPIPE has no preconditions; a closed stdout then gives
    // EPIPE instead of killing the VMM. The SIGABRT handler only makes async-signal-safe
    // calls (write, _exit).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(
            libc::SIGABRT,
            vmm_aborted as *const () as libc::sighandler_t,
        );
    }
    vmm::files::reserve_standard_fds();
    let status = vmm_main();
    // std's runtime would flush stdout at exit; without it, do it here.
    let _ = std::io::stdout().flush();
    status
}

/// The VMM aborted: say so and exit with the VMM's own failure status, not SIGABRT's 134.
extern "C" fn vmm_aborted(_: libc::c_int) {
    const TEXT: &[u8] =
        b"vmm: internal error: the VMM aborted (a bug in the VMM, not in the guest)\n";
    // SAFETY: write and _exit are async-signal-safe; TEXT is a static buffer.
    unsafe {
        libc::write(libc::STDERR_FILENO, TEXT.as_ptr().cast(), TEXT.len());
        libc::_exit(abi::exit_status::VMM_ERROR);
    }
}

/// Default `--mem`.
const DEFAULT_MEM: &str = "16M";
/// Default `--max-output` of `run` and `snapshot`.
const DEFAULT_MAX_OUTPUT: &str = "64M";

/// The guest settings shared by every subcommand, from its flags.
fn vm_config(
    mem_size: u64,
    timeout: Option<Duration>,
    args: Vec<String>,
    env: Vec<String>,
    max_output: u64,
    seccomp: bool,
) -> VmConfig {
    VmConfig {
        mem_size,
        timeout,
        args,
        env,
        seccomp,
        max_output,
        ..VmConfig::default()
    }
}

/// A command line the fast path took: a plain run, or a plain request through a server.
enum PlainRun {
    /// `vmm run [--timeline[=FORMAT]] (IMAGE | --from FILE) [-- ARGS...]`.
    Here(RunConfig, Option<TimelineFormat>),
    /// `vmm run --via SOCKET (IMAGE | --from FILE) [-- ARGS...]`.
    Via {
        socket: PathBuf,
        target: PathBuf,
        vm: VmConfig,
    },
}

/// The common cases, `vmm run [--timeline[=FORMAT] | --via SOCKET] (IMAGE | --from FILE)
/// [-- ARGS...]` with no other flag, parsed without clap: building and running clap's parser
/// costs ~0.1 ms of a 1.5 ms boot here (mostly first-touch page faults in its code), and a
/// client that only forwards a request to `vmm serve` has little else to do. Anything else
/// (`--timeline` with `--via`, any other flag, a non-UTF-8 argument) goes to clap, which also
/// gives the errors and help; the defaults are the same constants clap uses.
fn plain_run(args: &[std::ffi::OsString]) -> Option<PlainRun> {
    let args: Vec<&str> = args.iter().map(|a| a.to_str()).collect::<Option<_>>()?;
    let [_, "run", rest @ ..] = args.as_slice() else {
        return None;
    };
    let (format, rest) = match rest {
        ["--timeline" | "--timeline=text", rest @ ..] => (Some(TimelineFormat::Text), rest),
        ["--timeline=json", rest @ ..] => (Some(TimelineFormat::Json), rest),
        _ => (None, rest),
    };
    let (via, rest) = match rest {
        ["--via", socket, rest @ ..] if format.is_none() && !socket.starts_with('-') => {
            (Some(*socket), rest)
        }
        _ => (None, rest),
    };
    let (snapshot_only, target, guest_args) = match rest {
        ["--from", file, "--", guest_args @ ..] => (true, file, guest_args),
        ["--from", file] => (true, file, &[][..]),
        [image, "--", guest_args @ ..] => (false, image, guest_args),
        [image] => (false, image, &[][..]),
        _ => return None,
    };
    if target.starts_with('-') {
        return None;
    }
    let args = guest_args.iter().map(|a| (*a).to_owned()).collect();
    let mut vm = vm_config(
        parse_size(DEFAULT_MEM).ok()?,
        None,
        args,
        Vec::new(),
        parse_size(DEFAULT_MAX_OUTPUT).ok()?,
        true,
    );
    if let Some(socket) = via {
        // As clap's path: the request names the file either way (the server tells images
        // from snapshots).
        return Some(PlainRun::Via {
            socket: PathBuf::from(socket),
            target: PathBuf::from(target),
            vm,
        });
    }
    vm.devices.stdin = StdinSource::inherit();
    let config = RunConfig {
        snapshot_only,
        vm,
        measure_ram: format.is_some(),
        ..RunConfig::new(PathBuf::from(target))
    };
    Some(PlainRun::Here(config, format))
}

fn vmm_main() -> i32 {
    let mut timeline = Timeline::at_main();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match plain_run(&argv) {
        Some(PlainRun::Here(config, format)) => {
            timeline.args_parsed = Some(std::time::Instant::now());
            return run(&config, timeline, format);
        }
        Some(PlainRun::Via { socket, target, vm }) => {
            return run_via(&socket, target, &vm, &[], None);
        }
        None => {}
    }
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    timeline.args_parsed = Some(std::time::Instant::now());
    match cli.command {
        Command::SeccompList => seccomp_list(),
        Command::Serve {
            socket,
            socket_mode,
            allow,
            pool,
            snapshots,
            workers,
            max_timeout,
            request_timeout,
            cache_size,
            quiet,
            no_reuse,
            no_seccomp,
            volume_roots,
            allow_taps,
        } => serve(vmm::serve::ServeConfig {
            reuse: !no_reuse,
            socket_mode,
            allow,
            pool,
            snapshots,
            workers,
            seccomp: !no_seccomp,
            max_timeout,
            request_timeout,
            cache_bytes: cache_size,
            quiet,
            volume_roots,
            allow_taps,
            ..vmm::serve::ServeConfig::new(socket)
        }),
        Command::Snapshot {
            image,
            output,
            mem,
            env,
            max_output,
            timeout,
            volumes,
            args,
        } => {
            let mut vm = vm_config(mem, Some(timeout), args, env, max_output, true);
            if let Err(status) = give_input(&mut vm, &volumes) {
                return status;
            }
            let config = RunConfig {
                target: image,
                snapshot_only: false,
                vm,
                measure_ram: false,
                detach_teardown: false,
                core: None,
            };
            snapshot(&config, &output)
        }
        Command::Fleet {
            image,
            count,
            concurrency,
            mem,
            timeout,
            max_output,
            env,
            volumes,
            resident,
            no_reuse,
            manifest,
            json,
            no_seccomp,
            cores,
            net,
            args,
        } => {
            let mut defaults = vm_config(mem, timeout, args, env, max_output, !no_seccomp);
            defaults.devices.volumes = match Volume::open_all(&volumes) {
                Ok(volumes) => volumes,
                Err(err) => return fail(&err),
            };
            let options = FleetOptions {
                concurrency,
                resident,
                reuse: !no_reuse,
                json,
                cores,
                net,
            };
            fleet(image, manifest, count, defaults, options)
        }
        Command::Run {
            image,
            from,
            via,
            mem,
            timeout,
            timeline: format,
            env,
            sync_teardown,
            no_seccomp,
            debug_blocked_syscall,
            debug_panic,
            max_output,
            net,
            volumes,
            core,
            gdb,
            args,
        } => {
            assert!(!debug_panic, "--debug-panic");
            if no_seccomp {
                eprintln!("warning: --no-seccomp: the VMM runs the guest without its sandbox");
            }
            let snapshot_only = from.is_some();
            let Some(target) = from.or(image) else {
                return usage("vmm run needs IMAGE or --from FILE");
            };
            let mut vm = vm_config(mem, timeout, args, env, max_output, !no_seccomp);
            vm.debug_blocked_syscall = debug_blocked_syscall;
            if let Some(socket) = via {
                if format.is_some() {
                    return usage(
                        "--timeline cannot be used with --via (the guest runs in the server)",
                    );
                }
                return run_via(&socket, target, &vm, &volumes, net.as_ref());
            }
            if let Err(status) = give_input(&mut vm, &volumes) {
                return status;
            }
            if let Some(spec) = net {
                match spec.open() {
                    Ok(net) => vm.devices.net = Some(net),
                    Err(err) => return fail(&err),
                }
            }
            let config = RunConfig {
                target,
                snapshot_only,
                vm,
                measure_ram: format.is_some(),
                detach_teardown: !sync_teardown,
                core,
            };
            match gdb {
                Some(address) => run_under_gdb(&config, &address, timeline, format),
                None => run(&config, timeline, format),
            }
        }
    }
}

/// One line for an error with its causes; the status for "the VMM could not start the guest".
fn fail(err: &dyn std::error::Error) -> i32 {
    eprintln!("error: {}", vmm::error_chain(err));
    abi::exit_status::VMM_ERROR
}

fn usage(text: &str) -> i32 {
    eprintln!("error: {text} (see 'vmm --help')");
    abi::exit_status::VMM_ERROR
}

fn usage_error(err: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    let _ = err.print();
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
        _ => abi::exit_status::VMM_ERROR,
    }
}

fn seccomp_list() -> i32 {
    print!("{}", vmm::sandbox::listing());
    0
}

fn run(config: &RunConfig, timeline: Timeline, format: Option<TimelineFormat>) -> i32 {
    let result = vmm::launch::run(config, Console::inherit(), timeline);
    finish_run(result, &config.target, format)
}

/// Prints what `vmm run` says about a finished guest, and returns its status.
fn finish_run(
    result: Result<vmm::RunReport, vmm::LaunchError>,
    target: &std::path::Path,
    format: Option<TimelineFormat>,
) -> i32 {
    let report = match result {
        Ok(report) => report,
        Err(err) => {
            // Only a target that could not be opened gets the hint: other errors may come
            // from the sandboxed guest's thread, which may not look at files.
            let hint = matches!(err, vmm::LaunchError::Target(_))
                .then(|| built_image_named(target))
                .flatten()
                .map(|image| format!(" (did you mean {}?)", image.display()))
                .unwrap_or_default();
            eprintln!("error: {}{hint}", vmm::error_chain(&err));
            return abi::exit_status::VMM_ERROR;
        }
    };
    if let Some(text) = report.outcome.message() {
        eprint!("{text}");
    }
    let status = report.outcome.exit_status();
    match format {
        Some(TimelineFormat::Text) => eprint!("{}", timeline::format_text(&report, status)),
        Some(TimelineFormat::Json) => eprintln!("{}", timeline::format_json(&report, status)),
        None => {}
    }
    status
}

/// `target/images/NAME` when `target` is a bare name that is not a file here but an image
/// built by `cargo xtask build` is (`vmm run hello` from the project's folder).
fn built_image_named(target: &std::path::Path) -> Option<PathBuf> {
    let bare = target.components().count() == 1 && !target.as_os_str().is_empty();
    if !bare || target.symlink_metadata().is_ok() {
        return None;
    }
    let image = std::path::Path::new("target/images").join(target);
    image.is_file().then_some(image)
}

fn run_under_gdb(
    config: &RunConfig,
    address: &str,
    timeline: Timeline,
    format: Option<TimelineFormat>,
) -> i32 {
    let listener = match address
        .parse::<vmm::debug::GdbAddress>()
        .and_then(|address| vmm::debug::GdbListener::bind(&address))
    {
        Ok(listener) => listener,
        Err(err) => return fail(&err),
    };
    if config.vm.seccomp {
        eprintln!("warning: --gdb: the VMM runs the guest without its sandbox");
    }
    eprintln!("vmm: waiting for gdb: target remote {}", listener.target());
    let result = vmm::debug::run(config, listener, Console::inherit(), timeline);
    finish_run(result, &config.target, format)
}

/// `vmm run --via`: the server opens the volumes (beneath its `--volume-root`s), and the
/// guest's stdin is ours, forwarded through the socket.
fn run_via(
    socket: &std::path::Path,
    target: PathBuf,
    vm: &VmConfig,
    volumes: &[VolumeSpec],
    net: Option<&vmm::net::NetSpec>,
) -> i32 {
    let volumes = volumes
        .iter()
        .map(|spec| {
            let host = std::path::absolute(&spec.host).unwrap_or_else(|_| spec.host.clone());
            VolumeSpec {
                host,
                ..spec.clone()
            }
            .to_string()
        })
        .collect();
    let request = vmm::serve::Request {
        target: std::path::absolute(&target).unwrap_or(target),
        args: vm.args.clone(),
        env: vm.env.clone(),
        // --timeout is at most ten years (parse_timeout): its milliseconds fit a u64.
        timeout_ms: vm
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        max_output: vm.max_output,
        mem_size: vm.mem_size,
        volumes,
        stdin: true,
        net: net.map(ToString::to_string),
    };
    match vmm::serve::run_via(socket, &request) {
        Ok(status) => status,
        Err(err) => fail(&err),
    }
}

fn snapshot(config: &RunConfig, output: &std::path::Path) -> i32 {
    match vmm::launch::snapshot(config, Console::inherit(), output) {
        Ok(summary) => {
            eprintln!(
                "snapshot: {} ({} pages of guest memory, {} bytes)",
                output.display(),
                summary.pages,
                summary.file_size
            );
            0
        }
        Err(err) => fail(&err),
    }
}

fn serve(config: vmm::serve::ServeConfig) -> i32 {
    if !config.seccomp {
        eprintln!("warning: --no-seccomp: serve workers run without their sandbox");
    }
    match vmm::serve::serve(&config) {
        Ok(()) => 0,
        Err(err) => fail(&err),
    }
}

/// `vmm fleet`'s flags beyond the guests' own settings.
struct FleetOptions {
    concurrency: usize,
    resident: bool,
    reuse: bool,
    json: bool,
    cores: Option<PathBuf>,
    net: Option<vmm::net::NetSpec>,
}

fn fleet(
    image: Option<PathBuf>,
    manifest: Option<PathBuf>,
    count: usize,
    defaults: VmConfig,
    options: FleetOptions,
) -> i32 {
    use vmm::fleet::{FleetSpec, Group};
    if !defaults.seccomp {
        eprintln!("warning: --no-seccomp: fleet workers run without their sandbox");
    }
    let groups = match (manifest, image) {
        (Some(path), _) => match vmm::fleet::manifest::read(&path, &defaults) {
            Ok(groups) => groups,
            Err(err) => return fail(&err),
        },
        (None, Some(image)) => vec![Group {
            name: vmm::launch::guest_name(&image),
            image,
            count,
            vm: defaults.clone(),
            net: None,
        }],
        (None, None) => return usage("vmm fleet needs IMAGE or --manifest FILE"),
    };
    let spec = FleetSpec {
        groups,
        concurrency: options.concurrency,
        resident: options.resident,
        reuse: options.reuse,
        seccomp: defaults.seccomp,
        cores: options.cores,
        net: options.net,
    };
    let report = match vmm::fleet::run_fleet(&spec) {
        Ok(report) => report,
        Err(err) => return fail(&err),
    };
    for why in &report.not_reused {
        eprintln!("warning: VMs not reused, a new VM for each instance of {why}");
    }
    for why in &report.refused_reuse {
        eprintln!("note: destroyed instead of reused: {why}");
    }
    for group in &report.never_parked {
        eprintln!(
            "warning: --resident: no instance of {group} parked, so they ran one after another \
             instead of all at once (the image must park, e.g. with kernel::wait_for_release() as \
             idle does)"
        );
    }
    if options.json {
        println!("{}", vmm::fleet::format_json(&report));
    } else {
        print!("{}", vmm::fleet::format_table(&report));
    }
    0
}

/// Gives the guest this process's stdin and the volumes, opened now (before any sandbox); the
/// error status on a volume that cannot be opened.
fn give_input(vm: &mut VmConfig, volumes: &[VolumeSpec]) -> Result<(), i32> {
    vm.devices.volumes = Volume::open_all(volumes).map_err(|err| fail(&err))?;
    vm.devices.stdin = StdinSource::inherit();
    Ok(())
}

fn parse_volume(text: &str) -> Result<VolumeSpec, String> {
    VolumeSpec::parse(text).map_err(|err| err.to_string())
}

fn parse_mode(text: &str) -> Result<u32, String> {
    match u32::from_str_radix(text, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!(
            "invalid mode '{text}' (expected octal permission bits, e.g. 600 or 660)"
        )),
    }
}

fn parse_env(text: &str) -> Result<String, String> {
    if vmm::vm::is_env_entry(text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "invalid environment entry '{text}' (expected KEY=VALUE)"
        ))
    }
}
