//! `vmm`: the command line of the flick VMM.
//!
//! `#![no_main]`: the VMM enters at C `main` and skips std's runtime set-up (stack guard
//! probing through /proc/self/maps, sigaltstack, ...), about 50 µs of a 1.4 ms boot here.
//! It does itself the one thing of that set-up it needs: ignore SIGPIPE.

#![no_main]

use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use vmm::size::{parse_duration, parse_size};
use vmm::timeline::{self, Timeline};
use vmm::{Console, Outcome, RunConfig};

const EXIT_STATUS_HELP: &str = "\
Exit status:
  N    the app's own exit code (its low 8 bits)
  101  the app panicked
  124  the guest ran longer than --timeout
  125  the VMM could not start the guest (bad image, bad flag, no KVM, too little memory)
  134  the guest crashed (CPU exception, triple fault, emulation failure, bad hypercall)";

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
    /// Boot many instances of an image (or a manifest's mix), each in its own VM, C at a time.
    #[command(
        after_help = "Exit status: 0 when the fleet ran (whatever its guests did), 125 on bad input."
    )]
    Fleet {
        /// The image (not needed with --manifest).
        #[arg(required_unless_present = "manifest")]
        image: Option<PathBuf>,
        /// Instances of IMAGE.
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Worker threads booting instances.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// Guest RAM per instance.
        #[arg(long, default_value = "16M", value_parser = parse_size)]
        mem: u64,
        /// Per-instance timeout (until the guest exits, or parks with --resident).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// Console bytes allowed per instance.
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        max_output: u64,
        /// Environment for every instance (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<String>,
        /// Keep every instance alive at once (the image must park, like `idle`), then release
        /// them all: measures density.
        #[arg(long)]
        resident: bool,
        /// A TOML file of [[vm]] entries (image, count, args, env, mem, timeout, max_output, name).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Print the report as JSON, with every instance's status and output.
        #[arg(long)]
        json: bool,
        /// Run the workers without the seccomp sandbox.
        #[arg(long)]
        no_seccomp: bool,
        /// Arguments for every instance.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Boot an image and exit with its exit code.
    #[command(after_help = EXIT_STATUS_HELP)]
    Run {
        /// The image (a static ELF built by `cargo xtask build`).
        image: PathBuf,
        /// Guest RAM: 4M to 4G, a multiple of 2M.
        #[arg(long, default_value = "16M", value_parser = parse_size)]
        mem: u64,
        /// Stop the guest after this long (e.g. 500ms, 2s, 1m); exit status 124.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// After the guest exits, print the boot timeline, VM exits and RAM touched on stderr
        /// (`--timeline=json`: as one line of JSON).
        #[arg(long, value_name = "FORMAT", num_args = 0..=1, require_equals = true, default_missing_value = "text")]
        timeline: Option<TimelineFormat>,
        /// Tear the VM down before exiting instead of handing it to a helper process.
        #[arg(long, hide = true)]
        sync_teardown: bool,
        /// Stop the guest (status 134) once it has written this much console output.
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        max_output: u64,
        /// Run without the seccomp sandbox (for debugging; prints a warning).
        #[arg(long)]
        no_seccomp: bool,
        /// Make a blocked system call once sandboxed (tests the sandbox's report).
        #[arg(long, hide = true)]
        debug_blocked_syscall: bool,
        /// Set an environment variable for the app (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<String>,
        /// Arguments for the app.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

#[unsafe(no_mangle)]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: installing SIG_IGN for SIGPIPE has no preconditions; a closed stdout then gives
    // EPIPE instead of killing the VMM.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let status = vmm_main();
    // std's runtime would flush stdout at exit; without it, do it here.
    let _ = std::io::stdout().flush();
    status
}

fn vmm_main() -> i32 {
    let mut timeline = Timeline::at_main();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    timeline.args_parsed = Some(std::time::Instant::now());
    match cli.command {
        Command::Fleet {
            image,
            count,
            concurrency,
            mem,
            timeout,
            max_output,
            env,
            resident,
            manifest,
            json,
            no_seccomp,
            args,
        } => {
            if no_seccomp {
                eprintln!("warning: --no-seccomp: fleet workers run without their sandbox");
            }
            let defaults = vmm::fleet::GroupDefaults {
                mem_size: mem,
                timeout,
                max_output,
            };
            let groups = match (manifest, image) {
                (Some(path), _) => match vmm::fleet::read_manifest(&path, &defaults) {
                    Ok(groups) => groups,
                    Err(err) => return fleet_error(err),
                },
                (None, Some(image)) => vec![vmm::fleet::Group {
                    name: vmm::fleet::group_name(&image),
                    image,
                    count,
                    args,
                    env,
                    mem_size: mem,
                    timeout,
                    max_output,
                }],
                (None, None) => unreachable!("clap requires IMAGE or --manifest"),
            };
            let spec = vmm::fleet::FleetSpec {
                groups,
                concurrency,
                resident,
                seccomp: !no_seccomp,
            };
            match vmm::fleet::run_fleet(&spec) {
                Ok(report) if json => {
                    println!("{}", vmm::fleet::format_json(&report));
                    0
                }
                Ok(report) => {
                    print!("{}", vmm::fleet::format_table(&report));
                    0
                }
                Err(err) => fleet_error(err),
            }
        }
        Command::SeccompList => {
            for (name, why) in vmm::sandbox::ALLOWED {
                println!("{name:<16} {why}");
            }
            for name in vmm::sandbox::DENIED {
                println!("{name:<16} denied with EACCES (library probes that cope with failure)");
            }
            0
        }
        Command::Run {
            image,
            mem,
            timeout,
            timeline: format,
            env,
            sync_teardown,
            no_seccomp,
            debug_blocked_syscall,
            max_output,
            args,
        } => {
            if no_seccomp {
                eprintln!("warning: --no-seccomp: the VMM runs the guest without its sandbox");
            }
            let config = RunConfig {
                image,
                mem_size: mem,
                timeout,
                args,
                env,
                measure_ram: format.is_some(),
                detach_teardown: !sync_teardown,
                seccomp: !no_seccomp,
                debug_blocked_syscall,
                max_output,
            };
            run(&config, timeline, format)
        }
    }
}

fn fleet_error(err: vmm::fleet::FleetError) -> i32 {
    eprintln!("error: {:#}", anyhow::Error::from(err));
    abi::exit_status::VMM_ERROR
}

fn parse_env(text: &str) -> Result<String, String> {
    match text.split_once('=') {
        Some((key, _)) if !key.is_empty() && !key.contains('\0') && !text.contains('\0') => {
            Ok(text.to_owned())
        }
        _ => Err(format!(
            "invalid environment entry '{text}' (expected KEY=VALUE)"
        )),
    }
}

fn usage_error(err: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = err.print();
        return 0;
    }
    if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = err.print();
        return abi::exit_status::VMM_ERROR;
    }
    let rendered = err.render().to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or("error: invalid arguments");
    eprintln!("{first} (see 'vmm --help')");
    abi::exit_status::VMM_ERROR
}

fn run(config: &RunConfig, timeline: Timeline, format: Option<TimelineFormat>) -> i32 {
    match vmm::run(config, Console::inherit(), timeline) {
        Ok(report) => {
            match &report.outcome {
                Outcome::Exited(_) => {}
                Outcome::TimedOut(limit) => {
                    eprintln!("vmm: guest stopped: it ran longer than --timeout {limit:?}")
                }
                Outcome::Crashed(text) => eprint!("vmm: {text}"),
            }
            let status = report.outcome.exit_status();
            match format {
                Some(TimelineFormat::Text) => eprint!("{}", timeline::format_text(&report, status)),
                Some(TimelineFormat::Json) => {
                    eprintln!("{}", timeline::format_json(&report, status))
                }
                None => {}
            }
            status
        }
        Err(err) => {
            eprintln!("error: {:#}", anyhow::Error::from(err));
            abi::exit_status::VMM_ERROR
        }
    }
}
