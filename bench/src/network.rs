//! `cargo xtask bench --network`: the network section.
//!
//! Everything runs inside a network namespace this process makes (on one thread: children
//! inherit it), on links it makes there: a tap for our guest, and a veth pair into a second
//! namespace for the native peers. Every address is inside those namespaces; every load is
//! bounded in time.
//!
//! - Time to first response: from spawning the server to the first `GET /` answered 200 by a
//!   client that retries its connection every 100 µs (1 ms connect timeout). Peers: the static
//!   native Rust server (`native-httpd`, the same responses), the same under `unshare` with
//!   every namespace new (`nsenter` joins the peer network namespace first), crun running it
//!   in a container that joins that namespace, Docker running it in a container (a private
//!   `dockerd` started in this section's namespace, with its own bridge network: `docker run
//!   --network NET --ip ADDR`, Docker's veth and bridge as the link), and ours (`vmm run
//!   httpd --net`). The host knows every server's MAC (static neighbour entries), so that no
//!   ARP back-off sits in anyone's numbers.
//! - Throughput: `wrk` (keep-alive, bounded by `-d`) against the native server and against one
//!   VM, over their links; requests/s and p99, and our VM exits per request (from the VMM's
//!   `--timeline=json`).
//! - Density: `vmm fleet httpd --count N --concurrency N` on one bridge, each instance with its
//!   own tap and address; how long until every one has answered, and the memory it took.

use crate::error::{Error, Result};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The image benched as ours.
pub const IMAGE: &str = "httpd";
/// Runs of each peer for the time to first response.
pub const DEFAULT_RUNS: usize = 15;
/// The same with `--quick`.
pub const QUICK_RUNS: usize = 5;
/// How long each `wrk` load lasts.
pub const DEFAULT_LOAD: Duration = Duration::from_secs(5);
/// The same with `--quick`.
pub const QUICK_LOAD: Duration = Duration::from_secs(2);
/// Instances of the density fleet.
pub const DEFAULT_FLEET: usize = 100;
/// The same with `--quick`.
pub const QUICK_FLEET: usize = 20;

const TAP: &str = "fbtap0";
const TAP_HOST: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 2);
const GUEST_MAC: &str = "02:00:00:0f:1c:01";
const VETH: &str = "fbveth0";
const VETH_PEER: &str = "fbveth1";
const VETH_HOST: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 1);
const NATIVE: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 2);
const BRIDGE: &str = "fbbr0";
const BRIDGE_HOST: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
const FLEET_FIRST: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const DOCKER_SUBNET: &str = "10.95.0.0/24";
const DOCKER_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 95, 0, 1);
const DOCKER_BRIDGE: &str = "fbdock0";
const DOCKER_IP: Ipv4Addr = Ipv4Addr::new(10, 95, 0, 2);
const DOCKER_MAC: &str = "02:42:0a:5f:00:02";

/// Paths the network section uses.
pub struct Plan<'a> {
    /// The VMM.
    pub vmm: &'a Path,
    /// The `httpd` image.
    pub httpd: &'a Path,
    /// The static native server (`bench/native/httpd`).
    pub native: &'a Path,
    /// Runs of each peer for the time to first response.
    pub runs: usize,
    /// How long each `wrk` load lasts.
    pub load: Duration,
    /// Instances of the density fleet (0: none).
    pub fleet: usize,
    /// Scratch space (the crun bundle and state).
    pub dir: &'a Path,
}

/// Runs the section inside a network namespace of its own; its Markdown.
pub fn run(plan: &Plan<'_>) -> Result<String> {
    if which("wrk").is_none() {
        return Err(fail("the throughput runs need wrk (apt-get install wrk)"));
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<String> {
                // SAFETY: unshare only changes this thread's namespaces.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(Error::io("cannot make a network namespace (run as root)")(
                        std::io::Error::last_os_error(),
                    ));
                }
                let links = Links::make()?;
                measure(&links, plan)
            })
            .join()
            .unwrap_or_else(|_| Err(fail("the network bench's thread panicked")))
    })
}

fn fail(why: impl Into<String>) -> Error {
    Error::Check(why.into())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(Error::io("cannot run ip (apt-get install iproute2)"))?;
    if !out.status.success() {
        return Err(fail(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The links of this namespace: a tap for our guest, a veth into the peers' namespace.
struct Links {
    peer_ns: String,
}

impl Links {
    fn make() -> Result<Links> {
        let links = Links {
            peer_ns: format!("flick-bench-{}", std::process::id()),
        };
        ip(&["link", "set", "lo", "up"])?;
        ip(&["tuntap", "add", "dev", TAP, "mode", "tap"])?;
        ip(&["addr", "add", &format!("{TAP_HOST}/24"), "dev", TAP])?;
        ip(&["link", "set", TAP, "up"])?;
        ip(&[
            "neigh",
            "replace",
            &GUEST.to_string(),
            "lladdr",
            GUEST_MAC,
            "dev",
            TAP,
            "nud",
            "permanent",
        ])?;
        ip(&["netns", "add", &links.peer_ns])?;
        let ns = links.peer_ns.as_str();
        ip(&[
            "link", "add", VETH, "type", "veth", "peer", "name", VETH_PEER,
        ])?;
        ip(&["link", "set", VETH_PEER, "netns", ns])?;
        ip(&["addr", "add", &format!("{VETH_HOST}/24"), "dev", VETH])?;
        ip(&["link", "set", VETH, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{NATIVE}/24"),
            "dev",
            VETH_PEER,
        ])?;
        ip(&["-n", ns, "link", "set", VETH_PEER, "up"])?;
        let out = Command::new("ip")
            .args(["-n", ns, "-br", "link", "show", "dev", VETH_PEER])
            .output()
            .map_err(Error::io("cannot run ip"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mac = text
            .split_whitespace()
            .nth(2)
            .ok_or_else(|| fail("no MAC for the peer veth"))?
            .to_owned();
        ip(&[
            "neigh",
            "replace",
            &NATIVE.to_string(),
            "lladdr",
            &mac,
            "dev",
            VETH,
            "nud",
            "permanent",
        ])?;
        Ok(links)
    }

    fn peer_ns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.peer_ns)
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.peer_ns]);
    }
}

/// A server under test, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Peer {
    Native,
    Unshare,
    Crun,
    Docker,
    Ours,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Native => "native process",
            Peer::Unshare => "unshare (all namespaces)",
            Peer::Crun => "crun container",
            Peer::Docker => "Docker container (runc)",
            Peer::Ours => "flick microVM",
        }
    }

    fn address(self) -> Ipv4Addr {
        match self {
            Peer::Ours => GUEST,
            Peer::Docker => DOCKER_IP,
            _ => NATIVE,
        }
    }
}

/// Starts `peer`'s server (stdout discarded; stderr piped when `capture_stderr`).
fn spawn(
    peer: Peer,
    links: &Links,
    plan: &Plan<'_>,
    vm_flags: &[&str],
    capture_stderr: bool,
) -> Result<Child> {
    let (httpd, native) = (plan.httpd, plan.native);
    let listen = format!("{NATIVE}:80");
    let peer_ns = std::fs::File::open(links.peer_ns_path())
        .map_err(Error::io("cannot open the peer namespace"))?;
    let mut cmd = match peer {
        Peer::Native => {
            let mut cmd = Command::new(native);
            cmd.arg(&listen);
            let fd = peer_ns.as_raw_fd();
            // SAFETY: setns is async-signal-safe; `peer_ns` outlives the spawn below.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            cmd
        }
        Peer::Unshare => {
            // Joins the peers' network namespace (nsenter), then makes every other one new.
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net={}", links.peer_ns_path().display()))
                .arg("unshare")
                .args([
                    "--mount",
                    "--uts",
                    "--ipc",
                    "--pid",
                    "--fork",
                    "--cgroup",
                    "--kill-child",
                ])
                .arg(native)
                .arg(&listen);
            cmd
        }
        Peer::Crun | Peer::Docker => {
            return Err(fail("crun and Docker run through their own set-up"));
        }
        Peer::Ours => {
            let mut cmd = Command::new(plan.vmm);
            cmd.arg("run")
                .arg(httpd)
                .args([
                    "--net",
                    &format!("tap={TAP},ip={GUEST}/24,gw={TAP_HOST},mac={GUEST_MAC}"),
                ])
                .args(vm_flags);
            cmd
        }
    };
    cmd.stdout(Stdio::null());
    if capture_stderr {
        cmd.stderr(Stdio::piped());
    }
    let child = cmd
        .spawn()
        .map_err(Error::io(format!("cannot start {}", peer.name())))?;
    drop(peer_ns);
    Ok(child)
}

/// Retries `GET /` (connect timeout 1 ms, 100 µs between tries) until it is answered 200.
fn first_response(address: Ipv4Addr, limit: Duration) -> Result<()> {
    let addr = SocketAddr::from((address, 80));
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(1)) {
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .map_err(Error::io("cannot set a read timeout"))?;
            if stream
                .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                .is_ok()
            {
                let mut head = [0u8; 12];
                if stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200") {
                    return Ok(());
                }
            }
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    Err(fail(format!("{address} never answered")))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn measure(links: &Links, plan: &Plan<'_>) -> Result<String> {
    let runs = plan.runs.max(1);
    let crun = Crun::setup(links, plan);
    let docker = Docker::setup(plan);
    let peers: Vec<Peer> = [
        Peer::Native,
        Peer::Unshare,
        Peer::Crun,
        Peer::Docker,
        Peer::Ours,
    ]
    .into_iter()
    .filter(|p| *p != Peer::Crun || crun.is_ok())
    .filter(|p| *p != Peer::Docker || docker.is_ok())
    .collect();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); peers.len()];
    // Interleaved rounds: load on the machine drifts, each peer sees the same drift.
    for run in 0..runs {
        for (i, peer) in peers.iter().enumerate() {
            let started = Instant::now();
            let id = format!("net{run}");
            let server = match (peer, &crun, &docker) {
                (Peer::Crun, Ok(crun), _) => Server(crun.start(&id)?),
                (Peer::Docker, _, Ok(docker)) => Server(docker.start(&id)?),
                _ => Server(spawn(*peer, links, plan, &["--timeout", "30s"], false)?),
            };
            let answered = first_response(peer.address(), Duration::from_secs(10));
            let elapsed = started.elapsed();
            drop(server);
            if let (Peer::Crun, Ok(crun)) = (peer, &crun) {
                crun.remove(&id);
            }
            let mut what = peer.name().to_owned();
            if let (Peer::Docker, Ok(docker)) = (peer, &docker) {
                docker.remove(&id);
                if answered.is_err() {
                    what = format!("{what} (docker run said: {})", docker.said());
                }
            }
            answered.map_err(|e| Error::Context {
                what,
                source: Box::new(e),
            })?;
            times[i].push(elapsed.as_secs_f64() * 1e3);
        }
    }
    let medians: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
    let mut report = String::from("## Network\n\n");
    report.push_str(&format!(
        "Time to first response (spawn → first `GET /` answered 200), median of {runs}:\n\n| peer | ms | × native |\n|---|---:|---:|\n"
    ));
    for (i, peer) in peers.iter().enumerate() {
        report.push_str(&format!(
            "| {} | {:.2} | {:.2} |\n",
            peer.name(),
            medians[i],
            medians[i] / medians[0]
        ));
    }
    if let Err(why) = &crun {
        report.push_str(&format!("| crun container | not run: {why} | |\n"));
    }
    if let Err(why) = &docker {
        report.push_str(&format!("| Docker container (runc) | not run: {why} | |\n"));
    }
    let ours = peers.iter().position(|p| *p == Peer::Ours);
    let docker_at = peers.iter().position(|p| *p == Peer::Docker);
    if let (Some(ours), Some(docker_at)) = (ours, docker_at) {
        report.push_str(&format!(
            "\nflick microVM against the Docker container: {:.1}× faster to its first response.\n",
            medians[docker_at] / medians[ours]
        ));
    }
    // Docker's daemon and its NAT rules go before the throughput and density runs.
    drop(docker);
    report.push_str(&throughput(links, plan)?);
    if plan.fleet > 0 {
        report.push_str(&density(plan)?);
    }
    Ok(report)
}

/// crun running the native server in a container that joins the peers' network namespace
/// (the bench's OCI peer, its bundle's config changed to run the server there).
struct Crun {
    peer: crate::peers::peer::Peer,
}

impl Crun {
    fn setup(links: &Links, plan: &Plan<'_>) -> std::result::Result<Crun, String> {
        use crate::peers::oci::{self, Runtime};
        use crate::peers::peer::Setup;
        let payload = crate::peers::native::Payload {
            path: plan.native,
            name: "native-httpd",
            prints: "",
        };
        let peer = match oci::setup(plan.dir, Runtime::Crun, payload) {
            Setup::Ready(peer) => peer,
            Setup::NotInstalled { install, .. } => {
                return Err(format!("not installed ({install})"));
            }
            Setup::Failed { reason, .. } => return Err(reason),
        };
        let path = plan.dir.join("bundle-native-httpd/config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        let mut config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| e.to_string())?;
        config["process"]["args"] = serde_json::json!(["/native-httpd", format!("{NATIVE}:80")]);
        if let Some(namespaces) = config["linux"]["namespaces"].as_array_mut() {
            for ns in namespaces.iter_mut().filter(|ns| ns["type"] == "network") {
                ns["path"] = serde_json::json!(links.peer_ns_path());
            }
        }
        std::fs::write(&path, config.to_string()).map_err(|e| e.to_string())?;
        Ok(Crun { peer })
    }

    fn start(&self, id: &str) -> Result<Child> {
        self.peer
            .command(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(Error::io("cannot start crun"))
    }

    /// Kills and deletes container `id` (killing `crun run` leaves the server running).
    fn remove(&self, id: &str) {
        let run = self.peer.command(id);
        let args: Vec<std::ffi::OsString> = run.get_args().map(Into::into).collect();
        let Some(verb) = args.iter().position(|a| a == "run") else {
            return;
        };
        let container = args.last().cloned().unwrap_or_default();
        let mut delete = Command::new(run.get_program());
        delete
            .args(&args[..verb])
            .args(["delete", "-f"])
            .arg(container)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(ns) = &self.peer.mount_ns {
            ns.enter_before_exec(&mut delete);
        }
        let _ = delete.status();
    }
}

/// Docker running the native server in a container on a bridge network of a private daemon
/// started in this section's namespace; the daemon stops and its files go when dropped.
struct Docker {
    daemon: Option<crate::peers::docker::NetworkDaemon>,
    root: PathBuf,
}

impl Docker {
    fn setup(plan: &Plan<'_>) -> std::result::Result<Docker, String> {
        // The daemon's sockets live under its root: a short path (108-byte limit).
        let root = std::env::temp_dir().join(format!("flick-bench-net-{}", std::process::id()));
        let payload = crate::peers::native::Payload {
            path: plan.native,
            name: "native-httpd",
            prints: "",
        };
        let mut docker = Docker { daemon: None, root };
        let daemon = crate::peers::docker::NetworkDaemon::start(
            &docker.root,
            payload,
            DOCKER_SUBNET,
            &DOCKER_GATEWAY.to_string(),
            DOCKER_BRIDGE,
        )
        .map_err(|e| e.to_string())?;
        docker.daemon = Some(daemon);
        ip(&[
            "neigh",
            "replace",
            &DOCKER_IP.to_string(),
            "lladdr",
            DOCKER_MAC,
            "dev",
            DOCKER_BRIDGE,
            "nud",
            "permanent",
        ])
        .map_err(|e| e.to_string())?;
        Ok(docker)
    }

    fn daemon(&self) -> Result<&crate::peers::docker::NetworkDaemon> {
        self.daemon
            .as_ref()
            .ok_or_else(|| fail("the Docker daemon is gone"))
    }

    fn start(&self, id: &str) -> Result<Child> {
        let listen = format!("{DOCKER_IP}:80");
        self.daemon()?
            .run(
                id,
                &DOCKER_IP.to_string(),
                DOCKER_MAC,
                &["/native-httpd", &listen],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log()?)
            .spawn()
            .map_err(Error::io("cannot start docker run"))
    }

    /// Where `docker run`'s messages go (appended; read when a run fails).
    fn log(&self) -> Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("docker-run.log"))
            .map_err(Error::io("cannot open docker-run.log"))
    }

    /// The last line `docker run` wrote.
    fn said(&self) -> String {
        let text = std::fs::read_to_string(self.root.join("docker-run.log")).unwrap_or_default();
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("nothing")
            .to_owned()
    }

    fn remove(&self, id: &str) {
        if let Ok(daemon) = self.daemon() {
            daemon.remove(id);
        }
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        drop(self.daemon.take());
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// wrk's requests/s, p99 (ms) and request count.
fn wrk(address: Ipv4Addr, load: Duration) -> Result<(f64, f64, u64)> {
    let out = Command::new("wrk")
        .args(["-t2", "-c32", "--latency", "--timeout", "2s"])
        .arg(format!("-d{}s", load.as_secs()))
        .arg(format!("http://{address}/"))
        .output()
        .map_err(Error::io("cannot run wrk"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |prefix: &str| {
        text.lines().find_map(|l| {
            l.trim_start()
                .strip_prefix(prefix)
                .map(|v| v.trim().to_owned())
        })
    };
    let rate: f64 = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| fail(format!("wrk said: {text}")))?;
    let p99 = field("99%").map(|v| latency_ms(&v)).unwrap_or(f64::NAN);
    let count = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok((rate, p99, count))
}

fn latency_ms(text: &str) -> f64 {
    let (number, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let value: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => value / 1e3,
        "ms" => value,
        "s" => value * 1e3,
        _ => f64::NAN,
    }
}

fn throughput(links: &Links, plan: &Plan<'_>) -> Result<String> {
    let load = plan.load;
    let server = Server(spawn(Peer::Native, links, plan, &[], false)?);
    first_response(NATIVE, Duration::from_secs(10))?;
    let (native_rate, native_p99, _) = wrk(NATIVE, load)?;
    drop(server);
    let timeout = format!("{}s", load.as_secs() + 3);
    let mut vm = spawn(
        Peer::Ours,
        links,
        plan,
        &["--timeout", &timeout, "--timeline=json"],
        true,
    )?;
    first_response(GUEST, Duration::from_secs(10))?;
    let (rate, p99, count) = wrk(GUEST, load)?;
    // The VM stops at its timeout and prints its exit counts.
    let exits = read_exits(&mut vm);
    let _ = vm.wait();
    let per_request = exits.map(|e| e as f64 / (count + 1) as f64);
    let mut text = format!(
        "\nThroughput (wrk, 2 threads, 32 keep-alive connections, {} s, `GET /`):\n\n| server | requests/s | p99 ms | VM exits per request |\n|---|---:|---:|---:|\n",
        load.as_secs()
    );
    text.push_str(&format!(
        "| native process (veth) | {native_rate:.0} | {native_p99:.2} | - |\n"
    ));
    text.push_str(&format!(
        "| flick microVM (tap) | {rate:.0} ({:.2} × native) | {p99:.2} | {} |\n",
        rate / native_rate,
        per_request.map_or("?".to_owned(), |e| format!("{e:.3}"))
    ));
    Ok(text)
}

/// Total VM exits from the `--timeline=json` line on the VMM's stderr.
fn read_exits(vm: &mut Child) -> Option<u64> {
    let mut text = String::new();
    vm.stderr.as_mut()?.read_to_string(&mut text).ok()?;
    let line = text.lines().find(|l| l.starts_with('{'))?;
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    json["exits"]["total"].as_u64()
}

fn density(plan: &Plan<'_>) -> Result<String> {
    let count = plan.fleet;
    ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{BRIDGE_HOST}/16"), "dev", BRIDGE])?;
    ip(&["link", "set", BRIDGE, "up"])?;
    for i in 0..count {
        let tap = format!("fbfl{i}");
        ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
        ip(&["link", "set", &tap, "master", BRIDGE])?;
        ip(&["link", "set", &tap, "up"])?;
    }
    let available_before = mem_available_kib();
    let started = Instant::now();
    let fleet = Server(
        Command::new(plan.vmm)
            .args(["fleet"])
            .arg(plan.httpd)
            .args([
                "--count",
                &count.to_string(),
                "--concurrency",
                &count.to_string(),
            ])
            .args([
                "--timeout",
                "120s",
                "--net",
                &format!("tap=fbfl{{i}},ip={FLEET_FIRST}/16"),
            ])
            .args(["--", "--requests", "2", "--backlog", "2"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(Error::io("cannot start vmm fleet"))?,
    );
    let base = u32::from(FLEET_FIRST);
    for i in 0..count {
        first_response(Ipv4Addr::from(base + i as u32), Duration::from_secs(60))?;
    }
    let all_answered = started.elapsed();
    let rss = own_kib(fleet.0.id(), "VmRSS").unwrap_or(0);
    let available_at_peak = mem_available_kib();
    for i in 0..count {
        first_response(Ipv4Addr::from(base + i as u32), Duration::from_secs(10))?;
    }
    let mut fleet = fleet;
    let status = fleet
        .0
        .wait()
        .map_err(Error::io("cannot wait for vmm fleet"))?;
    let per_vm_host = available_before.saturating_sub(available_at_peak) as f64 / count as f64;
    Ok(format!(
        "\nDensity: `vmm fleet httpd --count {count} --concurrency {count} --net tap=fbfl{{i}},ip=...` on one bridge: every instance answered `GET /` {:.2} s after the fleet started; the VMM's RSS then {:.1} MiB ({:.0} KiB per VM); MemAvailable fell {:.0} KiB per VM (kernel included); the fleet exited {}.\n",
        all_answered.as_secs_f64(),
        rss as f64 / 1024.0,
        rss as f64 / count as f64,
        per_vm_host,
        status
    ))
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn own_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
