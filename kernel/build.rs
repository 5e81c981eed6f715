//! Puts `kernel/link.ld` on the linker's search path of every image (the `-Tlink.ld` in
//! `images/.cargo/config.toml` finds it there), relinks images when it changes, and refuses a
//! build without the guest link setup, which would otherwise fail far from the cause.

use std::env;

fn main() {
    let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo::rustc-link-search=native={dir}");
    println!("cargo::rerun-if-changed=link.ld");
    println!("cargo::rerun-if-changed=build.rs");

    let rustflags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if !rustflags
        .split('\x1f')
        .any(|flag| flag == "-Clink-arg=-Tlink.ld")
    {
        eprintln!(
            "The kernel builds only as part of a guest, with the link setup of \
             images/.cargo/config.toml: run cargo inside images/ or kernel/, or use \
             `cargo xtask build`. RUSTFLAGS set in the environment replace that setup."
        );
        std::process::exit(1);
    }
}
