//! `flick-runtime`: an OCI runtime with runc's command line that runs flick images as
//! microVMs. Docker: `dockerd --add-runtime flick=/path/to/flick-runtime`, then
//! `docker run --runtime=flick flick/hello`. See the library's documentation.
//!
//! `#![no_main]`, like the `vmm` binary: std's runtime set-up gives every thread an
//! alternate signal stack, and the thread that runs the guest, confined by the VMM's seccomp
//! filter, could then not exit (`sigaltstack` is not on its list).

#![no_main]

use clap::{Parser, Subcommand};
use flick_runtime::commands;
use flick_runtime::container::DEFAULT_ROOT;
use flick_runtime::create::{CreateRequest, create};
use flick_runtime::log::{Log, chain};
use liboci_cli::{CommonCmd, GlobalOpts, StandardCmd};
use std::path::PathBuf;

/// An OCI runtime that boots flick images in microVMs (runc's command line).
#[derive(Parser, Debug)]
#[command(name = "flick-runtime", version)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Standard(Box<StandardCmd>),
    #[command(flatten)]
    Common(Box<CommonCmd>),
}

#[unsafe(no_mangle)]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: installing SIG_IGN for SIGPIPE has no preconditions (std's runtime would).
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let status = runtime_main();
    let _ = std::io::Write::flush(&mut std::io::stdout());
    status
}

fn runtime_main() -> libc::c_int {
    let cli = Cli::parse();
    let log = Log::new(cli.global.log.clone(), cli.global.log_format.as_deref());
    let root = cli
        .global
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
    match run(cli, &root, &log) {
        Ok(()) => 0,
        Err(message) => {
            log.error(&message);
            1
        }
    }
}

fn run(cli: Cli, root: &std::path::Path, log: &Log) -> Result<(), String> {
    let text = |e: &dyn std::error::Error| chain(e);
    match cli.command {
        Command::Standard(cmd) => match *cmd {
            StandardCmd::Create(args) => create(&CreateRequest {
                root: root.to_owned(),
                id: args.container_id,
                bundle: args.bundle,
                pid_file: args.pid_file,
                console_socket: args.console_socket,
                systemd_cgroup: cli.global.systemd_cgroup,
            })
            .map_err(|e| text(&e)),
            StandardCmd::Start(args) => {
                commands::start(root, &args.container_id, log).map_err(|e| text(&e))
            }
            StandardCmd::State(args) => {
                let json = commands::state(root, &args.container_id).map_err(|e| text(&e))?;
                println!("{json}");
                Ok(())
            }
            StandardCmd::Kill(args) => {
                commands::kill(root, &args.container_id, &args.signal, args.all)
                    .map_err(|e| text(&e))
            }
            StandardCmd::Delete(args) => {
                commands::delete(root, &args.container_id, args.force, log).map_err(|e| text(&e))
            }
        },
        Command::Common(cmd) => match *cmd {
            CommonCmd::Features(_) => {
                println!("{}", commands::features());
                Ok(())
            }
            CommonCmd::Ps(args) => {
                let out =
                    commands::ps(root, &args.container_id, &args.format).map_err(|e| text(&e))?;
                println!("{out}");
                Ok(())
            }
            other => Err(format!(
                "'{}' is not supported: a flick container runs one VM, no other process",
                command_name(&other)
            )),
        },
    }
}

fn command_name(cmd: &CommonCmd) -> &'static str {
    match cmd {
        CommonCmd::Checkpointt(_) => "checkpoint",
        CommonCmd::Events(_) => "events",
        CommonCmd::Exec(_) => "exec",
        CommonCmd::Features(_) => "features",
        CommonCmd::List(_) => "list",
        CommonCmd::Pause(_) => "pause",
        CommonCmd::Ps(_) => "ps",
        CommonCmd::Resume(_) => "resume",
        CommonCmd::Run(_) => "run",
        CommonCmd::Update(_) => "update",
        CommonCmd::Spec(_) => "spec",
    }
}
