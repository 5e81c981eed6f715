//! The peers: what each one runs and how its runs are verified. [`peer`] holds what a peer is;
//! one module per kind of peer sets it up ([`ours`], [`floor`], [`native`], [`pool`], [`oci`],
//! [`docker`], [`qemu`]; [`serve`] and [`client`] are the warm rows' server and client); this
//! module picks the selected ones, in report order.

pub(crate) mod client;
pub(crate) mod docker;
pub(crate) mod floor;
pub(crate) mod native;
pub(crate) mod oci;
pub(crate) mod ours;
pub(crate) mod peer;
pub(crate) mod pool;
pub(crate) mod qemu;
pub(crate) mod serve;

use crate::error::Error;
use native::Payload;
use oci::Runtime;
use ours::Ours;
use peer::Setup;
use std::path::Path;

/// The cold-start peers in report order: a fresh process (or VM) per run.
pub(crate) const COLD: [&str; 10] = [
    "ours", "restore", "floor", "native", "true", "unshare", "crun", "runc", "docker", "qemu",
];
/// The warm peers in report order: a request to something started ahead.
pub(crate) const WARM: [&str; 4] = ["serve", "serve-fresh", "serve-process", "native-pool"];
/// The peers that run the static hello.
pub(crate) const NEED_HELLO: [&str; 6] =
    ["native", "unshare", "crun", "runc", "docker", "native-pool"];
/// What the static hello prints.
pub(crate) const HELLO_PRINTS: &str = "hello";
/// What the static idle program prints once it runs.
pub(crate) const IDLE_PRINTS: &str = "ready";

/// Sets up every selected cold and warm peer, in report order (cold, then warm). `hello` is
/// the static hello, or why it could not be built.
pub(crate) fn prepare(
    dir: &Path,
    ours: &Ours<'_>,
    hello: Result<&Path, &Error>,
    selected: &dyn Fn(&str) -> bool,
) -> Vec<Setup> {
    let mut setups = Vec::new();
    let mut snapshot_rows = ours::snapshot_rows(dir, ours, selected).into_iter();
    let with_hello = |name: &'static str, make: &dyn Fn(Payload<'_>) -> Setup| match hello {
        Ok(path) => make(Payload {
            path,
            name: "hello",
            prints: HELLO_PRINTS,
        }),
        Err(err) => Setup::failed(name, err),
    };
    for name in COLD.into_iter().chain(WARM).filter(|n| selected(n)) {
        let setup = match name {
            "ours" => ours::cold(dir, ours),
            "restore" | "serve" | "serve-fresh" | "serve-process" => match snapshot_rows.next() {
                Some(setup) => setup,
                None => unreachable!("snapshot_rows sets up every selected snapshot row"),
            },
            "floor" => floor::setup(dir),
            "native-pool" => with_hello(name, &|hello| pool::setup(dir, hello)),
            "true" => native::true_peer(dir),
            "docker" => with_hello(name, &|hello| docker::setup(dir, hello)),
            "qemu" => qemu::setup(dir),
            _ => with_hello(name, &|hello| process_setup(dir, name, hello)),
        };
        setups.push(setup);
    }
    setups
}

/// The process peers of the fleet bench that run a static payload, in report order.
pub(crate) const PROCESS_PEERS: [&str; 3] = ["native", "unshare", "crun"];

/// Sets up the selected [`PROCESS_PEERS`] running the static program `payload` (`hello` or
/// `idle`), or says why `payload` is missing.
pub(crate) fn prepare_processes(
    dir: &Path,
    payload: Result<Payload<'_>, &Error>,
    selected: &dyn Fn(&str) -> bool,
) -> Vec<Setup> {
    PROCESS_PEERS
        .into_iter()
        .filter(|n| selected(n))
        .map(|name| match payload {
            Ok(payload) => process_setup(dir, name, payload),
            Err(err) => Setup::failed(name, err),
        })
        .collect()
}

/// `name` (native, unshare, crun or runc) running `payload`.
fn process_setup(dir: &Path, name: &'static str, payload: Payload<'_>) -> Setup {
    match name {
        "native" => native::native(dir, payload),
        "unshare" => native::unshare(dir, payload),
        "crun" => oci::setup(dir, Runtime::Crun, payload),
        "runc" => oci::setup(dir, Runtime::Runc, payload),
        _ => unreachable!("{name} is not a process peer"),
    }
}
