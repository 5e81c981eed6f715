//! The C programs the bench compiles itself: the native baseline, a static glibc "hello" (the
//! binary that the namespace, OCI and Docker peers run as well), and `rss-probe`, a tiny static
//! spawner that reports a child's peak RSS without the bench's own RSS in it.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The whole program: one line on stdout, status 0.
const HELLO_C: &str = r#"#include <stdio.h>

int main(void) {
    puts("hello");
    return 0;
}
"#;

/// `rss-probe OUT PROGRAM [ARGS...]`: runs PROGRAM, writes its `ru_maxrss` (KiB) to OUT and
/// exits with its status. Linux records the RSS of the mm a process had before `execve` into
/// its `ru_maxrss`; a child forked by the bench would carry the bench's few MiB, one forked by
/// this program carries only this program's few hundred KiB.
const RSS_PROBE_C: &str = r#"#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: rss-probe OUT PROGRAM [ARGS...]\n");
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

/// Compiles the static hello into `dir/hello` and returns its path.
pub fn build_hello(dir: &Path) -> Result<PathBuf> {
    compile(dir, "hello", HELLO_C)
}

/// Compiles the RSS probe into `dir/rss-probe` and returns its path.
pub fn build_rss_probe(dir: &Path) -> Result<PathBuf> {
    compile(dir, "rss-probe", RSS_PROBE_C)
}

/// Compiles `source` with `cc -static -O2` into `dir/name`.
fn compile(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let source = dir.join(format!("{name}.c"));
    let binary = dir.join(name);
    std::fs::write(&source, text).with_context(|| format!("cannot write {}", source.display()))?;
    let output = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .context("cannot run cc (apt-get install gcc libc6-dev)")?;
    if !output.status.success() {
        bail!(
            "cc -static failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(binary)
}
