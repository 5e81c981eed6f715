//! The native baseline: a static glibc "hello" compiled from C by the bench itself, the binary
//! that the namespace, OCI and Docker peers run as well.

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

/// Compiles the static hello into `dir/hello` and returns its path.
pub fn build_hello(dir: &Path) -> Result<PathBuf> {
    let source = dir.join("hello.c");
    let binary = dir.join("hello");
    std::fs::write(&source, HELLO_C)
        .with_context(|| format!("cannot write {}", source.display()))?;
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
