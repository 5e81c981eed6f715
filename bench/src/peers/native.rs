//! The C programs the bench compiles itself (`cc -static -O2`) and the plain-process peers:
//! - `hello`, the native baseline (also what the namespace, OCI and Docker peers run);
//! - `idle`, which prints "ready" and waits for the end of its stdin (the resident instances
//!   of the fleet bench's memory measurement);
//! - `rss-probe`, a tiny static spawner that reports a child's peak RSS without the bench's
//!   own RSS in it;
//! - the peers `native` (the static hello), `true` (`/bin/true`) and `unshare` (all namespaces).

use super::peer::{Peer, Setup, which};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The whole program: one line on stdout, status 0.
const HELLO_C: &str = r#"#include <stdio.h>

int main(void) {
    puts("hello");
    return 0;
}
"#;

/// Prints "ready", then reads stdin until its end, then exits 0: an instance that stays
/// resident until the bench closes its stdin.
const IDLE_C: &str = r#"#include <stdio.h>
#include <unistd.h>

int main(void) {
    char buf[64];
    if (puts("ready") < 0 || fflush(stdout) != 0) {
        return 1;
    }
    while (read(0, buf, sizeof buf) > 0) {
    }
    return 0;
}
"#;

/// `rss-probe [--mntns NS] OUT PROGRAM [ARGS...]`: runs PROGRAM (in the mount namespace NS if
/// given), writes its `ru_maxrss` (KiB) to OUT and exits with its status. Linux records the RSS
/// of the mm a process had before `execve` into its `ru_maxrss`; a child forked by the bench
/// would carry the bench's few MiB, one forked by this program only its few hundred KiB.
const RSS_PROBE_C: &str = r#"#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "--mntns") == 0) {
        int ns = open(argv[2], O_RDONLY | O_CLOEXEC);
        if (ns < 0 || setns(ns, CLONE_NEWNS) != 0) {
            perror(argv[2]);
            return 2;
        }
        close(ns);
        argv += 2;
        argc -= 2;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: rss-probe [--mntns NS] OUT PROGRAM [ARGS...]\n");
        return 2;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        execv(argv[2], argv + 2);
        perror("execv");
        _exit(127);
    }
    int status;
    struct rusage usage;
    if (wait4(pid, &status, 0, &usage) < 0) {
        perror("wait4");
        return 2;
    }
    FILE *out = fopen(argv[1], "w");
    if (out == NULL || fprintf(out, "%ld\n", usage.ru_maxrss) < 0 || fclose(out) != 0) {
        perror(argv[1]);
        return 2;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
"#;

/// A static program that the process peers run, and what it prints when it starts.
#[derive(Clone, Copy)]
pub(crate) struct Payload<'a> {
    /// The binary.
    pub(crate) path: &'a Path,
    /// Its name inside a container's rootfs (`/NAME`).
    pub(crate) name: &'static str,
    /// What every run prints.
    pub(crate) prints: &'static str,
}

/// Compiles the static hello into `dir/hello`.
pub(crate) fn build_hello(dir: &Path) -> Result<PathBuf> {
    compile(dir, "hello", HELLO_C)
}

/// Compiles the static idle program into `dir/idle`.
pub(crate) fn build_idle(dir: &Path) -> Result<PathBuf> {
    compile(dir, "idle", IDLE_C)
}

/// Compiles the RSS probe into `dir/rss-probe`.
pub(crate) fn build_rss_probe(dir: &Path) -> Result<PathBuf> {
    compile(dir, "rss-probe", RSS_PROBE_C)
}

/// Compiles `text` with `cc -static -O2` into `dir/name` and returns its path.
pub(crate) fn compile(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let source = dir.join(format!("{name}.c"));
    let binary = dir.join(name);
    std::fs::write(&source, text)
        .map_err(Error::io(format!("cannot write {}", source.display())))?;
    let output = Command::new("cc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .map_err(Error::io("cannot run cc (apt-get install gcc libc6-dev)"))?;
    if !output.status.success() {
        return Err(Error::tool("cc -static", output.status, &output.stderr));
    }
    Ok(binary)
}

/// The payload itself, as a fresh process.
pub(crate) fn native(dir: &Path, payload: Payload<'_>) -> Setup {
    let what = format!("static glibc {} (cc -static -O2)", payload.name);
    Setup::Ready(Peer::new(
        dir,
        "native",
        what,
        payload.path.to_owned(),
        Vec::new(),
        payload.prints,
    ))
}

/// `/bin/true`, dynamic.
pub(crate) fn true_peer(dir: &Path) -> Setup {
    let path = PathBuf::from("/bin/true");
    if !path.is_file() {
        return Setup::not_installed("true", "apt-get install coreutils");
    }
    let what = "/bin/true (dynamic)".to_owned();
    let mut peer = Peer::new(dir, "true", what, path, Vec::new(), "");
    peer.expect_output = None;
    Setup::Ready(peer)
}

/// The payload in new pid, mount, net, uts and ipc namespaces.
pub(crate) fn unshare(dir: &Path, payload: Payload<'_>) -> Setup {
    let Some(unshare) = which("unshare") else {
        return Setup::not_installed("unshare", "apt-get install util-linux");
    };
    let flags = ["--fork", "--pid", "--mount", "--net", "--uts", "--ipc"];
    let mut args: Vec<String> = flags.into_iter().map(String::from).collect();
    args.push("--mount-proc".to_owned());
    args.push(payload.path.display().to_string());
    let what = format!(
        "static {} in new pid, mount, net, uts, ipc namespaces",
        payload.name
    );
    Setup::Ready(Peer::new(
        dir,
        "unshare",
        what,
        unshare,
        args,
        payload.prints,
    ))
}
