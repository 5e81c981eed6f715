//! The container process: forked by `create`, it enters the container's namespaces, pivots
//! into the root file system with `/dev/kvm` bound in, checks the image, and waits on the
//! exec fifo; on `start` it boots the image with [`vmm::launch::run`] and exits with the
//! app's code.
//!
//! Two forks, as runc's: `create` forks an intermediate process that joins and unshares the
//! namespaces (a new pid namespace takes effect only for children) and forks the container
//! process, the first process of that pid namespace; the intermediate reports its pid and
//! exits, so the container process is reparented to the nearest subreaper (containerd's
//! shim, which reaps it and reads its exit status). Both talk to `create` over a
//! `SOCK_SEQPACKET` pair: [`Msg`].
//!
//! The container process in order: wait until `create` has put it in its cgroup; cgroup
//! namespace; hostname; mounts (root file system bound to itself, a small tmpfs on `/dev`
//! holding `/dev/kvm`); `createRuntime`/`prestart` hooks (run by `create`, this process
//! waits); `createContainer` hooks; `/dev/net/tun` opened (a container with a network
//! namespace); `pivot_root`; find and check the image; stdio (the terminal's slave in
//! terminal mode); rlimits; capabilities, user, `no_new_privs` (checked only, with a
//! network to connect); "ready"; wait for "created" (`create` saved the state; if `create`
//! dies first, so does this process); block opening the exec fifo for writing until `start`
//! opens it for reading; the guest's network ([`crate::network`]) and then capabilities,
//! user, `no_new_privs` (with a network to connect); `startContainer` hooks; boot.
//!
//! The network is connected after `start` because Docker configures the container's
//! interface only then (between the runtime's `create` and `start`, in the namespace of the
//! container process's pid; a CNI plugin has done it before `create`), and it needs
//! `CAP_NET_ADMIN`: a container with a network namespace of its own keeps its privileges
//! until the network is connected, and no guest code runs before it drops them. Every other
//! container drops them before "ready", so that a failure fails `create` with one line in
//! the runtime's log (which Docker shows) rather than the container after `start`.

use crate::console;
use crate::hooks;
use crate::log::chain;
use crate::marker::{MARKER_FILE, MAX_MARKER_SIZE, Marker};
use crate::spec::{KVM_DEVICE, Plan};
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, recv, send, socketpair};
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::{ContainerState, PosixRlimitType};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The largest message between `create` and the container process.
const MAX_MESSAGE: usize = 64 * 1024;
/// The exit status of a container whose VMM could not start the guest (`vmm run`'s).
const VMM_ERROR: i32 = 125;

/// Messages between `create` and the container process.
#[derive(Debug, Serialize, Deserialize)]
pub enum Msg {
    /// Intermediate → create: the container process's pid in the runtime's pid namespace.
    Pid(i32),
    /// Create → container: it is in its cgroup; its pid as hooks see it.
    Go {
        /// The container process's pid in the runtime's pid namespace.
        pid: i32,
    },
    /// Container → create: namespaces and mounts exist; run `createRuntime`/`prestart`.
    RunHooks,
    /// Create → container: those hooks succeeded.
    HooksDone,
    /// Container → create: set up; it waits on the exec fifo once the state is saved.
    Ready,
    /// Create → container: the state and pid file are written.
    Created,
    /// Intermediate or container → create: set-up failed, and why.
    Failed(String),
}

/// Errors of the channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The socket failed.
    #[error("cannot talk to the container process")]
    Io(#[source] nix::Error),
    /// A message was not ours.
    #[error("the container process sent a malformed message")]
    Malformed(#[source] serde_json::Error),
}

/// One end of the `SOCK_SEQPACKET` pair.
pub struct Channel(OwnedFd);

impl Channel {
    /// A connected pair.
    pub fn pair() -> Result<(Channel, Channel), ChannelError> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(ChannelError::Io)?;
        Ok((Channel(a), Channel(b)))
    }

    /// Sends one message.
    pub fn send(&self, msg: &Msg) -> Result<(), ChannelError> {
        let bytes = serde_json::to_vec(msg).expect("messages serialize");
        send(self.0.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL).map_err(ChannelError::Io)?;
        Ok(())
    }

    /// Receives one message; `None` when the other end has closed.
    pub fn recv(&self) -> Result<Option<Msg>, ChannelError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let n = loop {
            match recv(self.0.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other.map_err(ChannelError::Io)?,
            }
        };
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_slice(&buf[..n])
            .map(Some)
            .map_err(ChannelError::Malformed)
    }

    /// Gives up on a [`recv`](Self::recv) after `timeout`.
    pub fn set_timeout(&self, timeout: std::time::Duration) -> Result<(), ChannelError> {
        let tv = nix::sys::time::TimeVal::new(
            timeout.as_secs() as libc::time_t,
            timeout.subsec_micros() as libc::suseconds_t,
        );
        nix::sys::socket::setsockopt(&self.0, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(ChannelError::Io)
    }

    fn raw(&self) -> i32 {
        self.0.as_raw_fd()
    }
}

/// Errors of the container process's set-up, sent to `create` as text.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A namespace could not be joined or made.
    #[error("cannot enter the container's namespaces")]
    Namespaces(#[source] nix::Error),
    /// A namespace path could not be opened.
    #[error("cannot open the namespace {path}")]
    NamespacePath {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// `create` went away.
    #[error("the runtime went away during set-up")]
    RuntimeGone,
    /// The channel failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// A system call of the set-up failed.
    #[error("cannot {what}")]
    Setup {
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The root file system has no usable `/dev`.
    #[error("the root file system's /dev is {0}")]
    BadDev(&'static str),
    /// A file could not be used.
    #[error("cannot {what}")]
    Io {
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Neither annotation nor marker names an image.
    #[error(
        "not a flick image: no {} annotation and no /{MARKER_FILE} in the root file system",
        crate::marker::IMAGE_ANNOTATION
    )]
    NotFlick,
    /// The marker is unusable.
    #[error(transparent)]
    Marker(#[from] crate::marker::MarkerError),
    /// The image is unusable.
    #[error("{path} is not a usable flick image")]
    Image {
        /// The image path in the root file system.
        path: String,
        /// Why.
        #[source]
        source: vmm::ImageError,
    },
    /// A hook failed.
    #[error(transparent)]
    Hook(#[from] hooks::HookError),
    /// config.json names a capability this runtime does not know.
    #[error("unknown capability {0}")]
    UnknownCapability(String),
    /// A capability set could not be set.
    #[error("cannot set the {what} capabilities")]
    Capabilities {
        /// Which set.
        what: &'static str,
        /// Why.
        #[source]
        source: caps::errors::CapsError,
    },
}

fn setup(what: impl Into<String>) -> impl FnOnce(nix::Error) -> InitError {
    let what = what.into();
    move |source| InitError::Setup { what, source }
}

/// The intermediate process: enters the namespaces, forks the container process, reports its
/// pid and exits.
pub fn intermediate(plan: &Plan, chan: Channel, state_dir: OwnedFd, slave: Option<OwnedFd>) -> ! {
    // The runtime's own network namespace is the host's (Docker's `--network host` names it
    // by path): the container process must recognise it and leave it alone.
    let host_netns = crate::network::NetnsId::current();
    if let Err(err) = enter_namespaces(plan) {
        let _ = chan.send(&Msg::Failed(chain(&err)));
        exit_now(1);
    }
    // SAFETY: this process is single-threaded (a fork of the single-threaded `create`).
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => container_process(plan, chan, state_dir, slave, host_netns),
        Ok(ForkResult::Parent { child }) => {
            let _ = chan.send(&Msg::Pid(child.as_raw()));
            exit_now(0)
        }
        Err(err) => {
            let _ = chan.send(&Msg::Failed(chain(&InitError::Setup {
                what: "fork the container process".into(),
                source: err,
            })));
            exit_now(1)
        }
    }
}

/// Joins the namespaces with a path (all opened first: joining a mount namespace changes
/// what paths mean), then unshares the new ones but the cgroup namespace, which is made
/// after the process joined its cgroup.
fn enter_namespaces(plan: &Plan) -> Result<(), InitError> {
    let mut joins = Vec::new();
    for ns in &plan.namespaces {
        if let Some(path) = &ns.path {
            let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|source| InitError::NamespacePath {
                    path: path.clone(),
                    source,
                })?;
            // SAFETY: `open` just returned this descriptor, owned by nobody else.
            joins.push((unsafe { OwnedFd::from_raw_fd(fd) }, ns.kind));
        }
    }
    for (fd, kind) in &joins {
        nix::sched::setns(fd, *kind).map_err(InitError::Namespaces)?;
    }
    let flags = plan.new_namespace_flags() - CloneFlags::CLONE_NEWCGROUP;
    nix::sched::unshare(flags).map_err(InitError::Namespaces)
}

/// The container process: set-up, wait for `start`, boot, exit with the app's status.
fn container_process(
    plan: &Plan,
    chan: Channel,
    state_dir: OwnedFd,
    slave: Option<OwnedFd>,
    host_netns: Option<crate::network::NetnsId>,
) -> ! {
    let keep = [
        Some(chan.raw()),
        Some(state_dir.as_raw_fd()),
        slave.as_ref().map(|s| s.as_raw_fd()),
    ];
    close_other_fds(&keep.into_iter().flatten().collect::<Vec<_>>());
    let config = match prepare(plan, &chan, slave, host_netns) {
        Ok(config) => config,
        Err(err) => {
            let _ = chan.send(&Msg::Failed(chain(&err)));
            exit_now(1)
        }
    };
    // Only once `create` has saved the state is there a container to start or delete: if
    // `create` dies before, this process must not wait on the fifo for ever.
    if chan.send(&Msg::Ready).is_err() || !matches!(chan.recv(), Ok(Some(Msg::Created))) {
        exit_now(1);
    }
    drop(chan);
    if let Err(err) = wait_for_start(&state_dir) {
        eprintln!("flick-runtime: {}", chain(&err));
        exit_now(VMM_ERROR);
    }
    let mut run = config.run;
    if let Some(tun) = config.tun {
        let save = |planned: &crate::network::Changes| {
            record_network_changes(&state_dir, config.netns.as_ref(), planned)
        };
        match crate::network::connect_guest(tun, save) {
            Ok(net) => run.vm.devices.net = net,
            Err(err) => {
                eprintln!(
                    "flick-runtime: cannot give the guest the container's network: {}",
                    chain(&err)
                );
                exit_now(VMM_ERROR);
            }
        }
    }
    drop(state_dir);
    if let Some(privileges) = config.privileges
        && let Err(err) = privileges.apply()
    {
        eprintln!("flick-runtime: {}", chain(&err));
        exit_now(VMM_ERROR);
    }
    let (pid, plan_hooks) = (config.host_pid, &plan.hooks);
    let state = hooks::state(
        &plan.id,
        ContainerState::Running,
        pid,
        &plan.bundle,
        &plan.annotations,
    );
    if let Err(err) = hooks::run(
        "startContainer",
        plan_hooks.start_container().as_deref(),
        &state,
    ) {
        eprintln!("flick-runtime: {}", chain(&err));
        exit_now(VMM_ERROR);
    }
    exit_now(boot(&run))
}

/// Saves what connecting the guest will change in a namespace that outlives the container
/// (one with a path) for `delete`, which puts it back: this process gives up
/// `CAP_NET_ADMIN` before the guest runs, and may end by `SIGKILL`, even in the middle of
/// the take-over. Saved before anything changes; a record that cannot be saved fails the
/// container before it changes the namespace.
fn record_network_changes(
    state_dir: &OwnedFd,
    netns: Option<&(PathBuf, crate::network::NetnsId)>,
    planned: &crate::network::Changes,
) -> Result<(), crate::network::NetworkError> {
    use std::os::fd::AsFd;
    let Some((path, id)) = netns else {
        return Ok(());
    };
    if planned.is_empty() {
        return Ok(());
    }
    crate::network::Record::new(planned, path.clone(), *id).save(state_dir.as_fd())
}

/// What the container process boots.
struct Prepared {
    run: vmm::RunConfig,
    host_pid: i32,
    /// `/dev/net/tun` for the guest's tap, when the container has a network namespace of
    /// its own (an error matters only if the namespace turns out to have an interface).
    tun: Option<Result<OwnedFd, crate::network::NetworkError>>,
    /// What the process gives up once the network is connected; `None`: given up already
    /// (no network to connect, so `create` saw any failure).
    privileges: Option<Privileges>,
    /// The container's own network namespace, when config.json names it by a path (it
    /// outlives the container, which must put it back as it was): the path and identity.
    netns: Option<(PathBuf, crate::network::NetnsId)>,
}

fn prepare(
    plan: &Plan,
    chan: &Channel,
    slave: Option<OwnedFd>,
    host_netns: Option<crate::network::NetnsId>,
) -> Result<Prepared, InitError> {
    crate::signals::install_stop_handlers().map_err(setup("install signal handlers"))?;
    let host_pid = match chan.recv()? {
        Some(Msg::Go { pid }) => pid,
        _ => return Err(InitError::RuntimeGone),
    };
    if plan
        .namespaces
        .iter()
        .any(|n| n.kind == CloneFlags::CLONE_NEWCGROUP && n.path.is_none())
    {
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(setup("make the cgroup namespace"))?;
    }
    if let Some(hostname) = &plan.hostname {
        nix::unistd::sethostname(hostname).map_err(setup("set the hostname"))?;
    }
    mount_rootfs(&plan.rootfs, (plan.user.0, plan.user.1))?;
    chan.send(&Msg::RunHooks)?;
    match chan.recv()? {
        Some(Msg::HooksDone) => {}
        _ => return Err(InitError::RuntimeGone),
    }
    let state = hooks::state(
        &plan.id,
        ContainerState::Created,
        host_pid,
        &plan.bundle,
        &plan.annotations,
    );
    hooks::run(
        "createContainer",
        plan.hooks.create_container().as_deref(),
        &state,
    )?;
    // Only a network namespace other than the runtime's (the host's) is the container's own,
    // and not one joined through another process (`/proc/PID/ns/net`: Docker's
    // `--network container:X`), whose interface is that process's. Both must be known to
    // differ: a namespace that cannot be told apart from the host's is left alone.
    let network = plan.namespaces.iter().find(|n| {
        n.kind == CloneFlags::CLONE_NEWNET
            && !n
                .path
                .as_deref()
                .is_some_and(crate::network::is_another_process_namespace)
    });
    let netns_id = crate::network::NetnsId::current();
    let own_network = network.is_some()
        && matches!((netns_id, host_netns), (Some(now), Some(host)) if now != host);
    let tun = own_network.then(crate::network::open_tun);
    let netns = match (own_network, network.and_then(|n| n.path.clone()), netns_id) {
        (true, Some(path), Some(id)) => Some((path, id)),
        _ => None,
    };
    pivot_into(&plan.rootfs, plan.root_readonly)?;
    let image = find_image(plan)?;
    let checked = vmm::Image::from_file(Path::new(&image)).map_err(|source| InitError::Image {
        path: image.clone(),
        source,
    })?;
    checked
        .check_fits(plan.mem_size)
        .map_err(|source| InitError::Image {
            path: image.clone(),
            source,
        })?;
    if let Some(slave) = slave {
        console::become_terminal_owner(slave).map_err(setup("take the terminal"))?;
    }
    set_rlimits(plan)?;
    let privileges = Privileges::from_plan(plan)?;
    // Connecting a network needs `CAP_NET_ADMIN`, so only then is the drop put off.
    let privileges = match tun {
        Some(_) => Some(privileges),
        None => {
            privileges.apply()?;
            None
        }
    };
    Ok(Prepared {
        run: vmm::RunConfig {
            vm: vmm::VmConfig {
                mem_size: plan.mem_size,
                args: plan.args.clone(),
                env: plan.env.clone(),
                seccomp: true,
                // Docker's log drivers bound what a container may print; the VMM does not.
                max_output: u64::MAX,
                ..vmm::VmConfig::default()
            },
            ..vmm::RunConfig::new(PathBuf::from(image))
        },
        host_pid,
        tun,
        privileges,
        netns,
    })
}

/// Makes the root file system a mount point of its own with a private `/dev` holding only
/// `/dev/kvm`; mount events of the host still propagate in (slave), none propagate out.
fn mount_rootfs(rootfs: &Path, owner: (u32, u32)) -> Result<(), InitError> {
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none)
        .map_err(setup("make the mounts private"))?;
    mount(
        Some(rootfs),
        rootfs,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(setup(format!("bind {}", rootfs.display())))?;
    let dev = rootfs.join("dev");
    match std::fs::symlink_metadata(&dev) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(InitError::BadDev("not a directory")),
        Err(_) => std::fs::create_dir(&dev)
            .map_err(|_| InitError::BadDev("missing and cannot be made"))?,
    }
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=64k"),
    )
    .map_err(setup("mount a tmpfs on /dev"))?;
    make_kvm_node(&dev.join("kvm"), owner)
}

/// `/dev/kvm` in the container: a device node of its own, owned by the container's user (the
/// VMM may not run as root, and the host's node may be root's alone), as runc makes the
/// devices config.json lists; where `mknod` is refused, the host's node bound in.
fn make_kvm_node(path: &Path, (uid, gid): (u32, u32)) -> Result<(), InitError> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let mode = Mode::from_bits_truncate(0o660);
    match mknod(
        path,
        SFlag::S_IFCHR,
        mode,
        makedev(KVM_DEVICE.0, KVM_DEVICE.1),
    ) {
        Ok(()) => {
            nix::sys::stat::fchmodat(
                None,
                path,
                mode,
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(setup("set /dev/kvm's mode"))?;
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|source| InitError::Io {
                what: "give /dev/kvm to the container's user".into(),
                source,
            })
        }
        Err(nix::errno::Errno::EPERM) => {
            std::fs::File::create(path).map_err(|source| InitError::Io {
                what: "make /dev/kvm".into(),
                source,
            })?;
            let none: Option<&str> = None;
            mount(Some("/dev/kvm"), path, none, MsFlags::MS_BIND, none)
                .map_err(setup("bind /dev/kvm into the container"))
        }
        Err(source) => Err(InitError::Setup {
            what: "make /dev/kvm".into(),
            source,
        }),
    }
}

/// `pivot_root` into `rootfs` and drop the old root (runc's `pivot_root(".", ".")`).
fn pivot_into(rootfs: &Path, readonly: bool) -> Result<(), InitError> {
    nix::unistd::chdir(rootfs).map_err(setup("enter the root file system"))?;
    nix::unistd::pivot_root(".", ".").map_err(setup("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(setup("detach the old root"))?;
    nix::unistd::chdir("/").map_err(setup("enter /"))?;
    if readonly {
        let none: Option<&str> = None;
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(none, "/", none, flags, none).map_err(setup("make the root read-only"))?;
    }
    Ok(())
}

/// The image path: the annotation, else the marker file (read inside the new root).
fn find_image(plan: &Plan) -> Result<String, InitError> {
    if let Some(path) = &plan.image_annotation {
        return Ok(path.clone());
    }
    let marker_path = format!("/{MARKER_FILE}");
    let file = match std::fs::File::open(&marker_path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(InitError::NotFlick),
        Err(source) => {
            return Err(InitError::Io {
                what: format!("read {marker_path}"),
                source,
            });
        }
    };
    let mut bytes = Vec::new();
    file.take(MAX_MARKER_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| InitError::Io {
            what: format!("read {marker_path}"),
            source,
        })?;
    Ok(Marker::parse(&bytes)?.image)
}

/// Sets `process.rlimits`.
fn set_rlimits(plan: &Plan) -> Result<(), InitError> {
    for rlimit in &plan.rlimits {
        let resource = match rlimit.typ() {
            PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
            PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
            PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
            PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
            PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
            PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
            PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
            PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
            PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
            PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
            PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
            PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
            PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
            PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
            PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
            PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
        };
        let limit = libc::rlimit {
            rlim_cur: rlimit.soft(),
            rlim_max: rlimit.hard(),
        };
        // SAFETY: `limit` is a valid rlimit that outlives the call.
        let rc = unsafe { libc::setrlimit(resource, &limit) };
        nix::errno::Errno::result(rc).map_err(setup(format!("set {:?}", rlimit.typ())))?;
    }
    Ok(())
}

/// A capability set of config.json in the `caps` crate's terms.
fn cap_set(set: &Option<oci_spec::runtime::Capabilities>) -> Result<caps::CapsHashSet, InitError> {
    let mut out = caps::CapsHashSet::new();
    for cap in set.iter().flatten() {
        let name = format!("CAP_{cap}");
        out.insert(
            name.parse()
                .map_err(|_| InitError::UnknownCapability(name))?,
        );
    }
    Ok(out)
}

fn caps_failed(what: &'static str) -> impl Fn(caps::errors::CapsError) -> InitError {
    move |source| InitError::Capabilities { what, source }
}

/// The capability sets of `process.capabilities`, read at `create` (an unknown name fails
/// it) and applied with the rest of [`Privileges`].
struct CapabilitySets {
    /// `None`: config.json gives no bounding set; keep the runtime's.
    bounding: Option<caps::CapsHashSet>,
    effective: caps::CapsHashSet,
    permitted: caps::CapsHashSet,
    inheritable: caps::CapsHashSet,
    ambient: caps::CapsHashSet,
}

/// What the container process gives up before its guest runs: capabilities, user,
/// `no_new_privs` (`process` of config.json), checked in `create`, applied there too unless
/// a network is to be connected after `start`.
struct Privileges {
    capabilities: Option<CapabilitySets>,
    user: (u32, u32, Vec<u32>),
    no_new_privileges: bool,
}

impl Privileges {
    fn from_plan(plan: &Plan) -> Result<Privileges, InitError> {
        let capabilities = match &plan.capabilities {
            None => None,
            Some(given) => Some(CapabilitySets {
                bounding: given
                    .bounding()
                    .is_some()
                    .then(|| cap_set(given.bounding()))
                    .transpose()?,
                effective: cap_set(given.effective())?,
                permitted: cap_set(given.permitted())?,
                inheritable: cap_set(given.inheritable())?,
                ambient: cap_set(given.ambient())?,
            }),
        };
        Ok(Privileges {
            capabilities,
            user: plan.user.clone(),
            no_new_privileges: plan.no_new_privileges,
        })
    }

    /// runc's order: the bounding set while `CAP_SETPCAP` is held, the user with the
    /// permitted set kept across setuid, then the sets the process runs with.
    fn apply(&self) -> Result<(), InitError> {
        self.drop_bounding_set()?;
        keep_capabilities(true)?;
        self.set_user()?;
        keep_capabilities(false)?;
        self.set_capabilities()?;
        if self.no_new_privileges {
            // SAFETY: prctl with integer arguments only.
            let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            nix::errno::Errno::result(rc).map_err(setup("set no_new_privs"))?;
        }
        Ok(())
    }

    /// Drops from the bounding set what `process.capabilities.bounding` does not list.
    fn drop_bounding_set(&self) -> Result<(), InitError> {
        let Some(keep) = self.capabilities.as_ref().and_then(|c| c.bounding.as_ref()) else {
            return Ok(());
        };
        for cap in caps::all().difference(keep) {
            caps::drop(None, caps::CapSet::Bounding, *cap).map_err(caps_failed("bounding"))?;
        }
        Ok(())
    }

    /// Sets the effective, permitted, inheritable and ambient sets, in an order where each
    /// step is allowed.
    fn set_capabilities(&self) -> Result<(), InitError> {
        use caps::CapSet;
        let Some(sets) = &self.capabilities else {
            return Ok(());
        };
        let both = sets
            .effective
            .intersection(&sets.permitted)
            .copied()
            .collect();
        caps::set(None, CapSet::Effective, &both).map_err(caps_failed("effective"))?;
        caps::set(None, CapSet::Permitted, &sets.permitted).map_err(caps_failed("permitted"))?;
        caps::set(None, CapSet::Effective, &sets.effective).map_err(caps_failed("effective"))?;
        caps::set(None, CapSet::Inheritable, &sets.inheritable)
            .map_err(caps_failed("inheritable"))?;
        caps::set(None, CapSet::Ambient, &sets.ambient).map_err(caps_failed("ambient"))
    }

    /// Switches to `process.user` unless it is root; the user also gets `/dev/kvm`'s group
    /// (it matters where the host's node is bound in).
    fn set_user(&self) -> Result<(), InitError> {
        use nix::unistd::{Gid, Uid};
        use std::os::unix::fs::MetadataExt;
        let (uid, gid, ref additional) = self.user;
        if uid == 0 && gid == 0 && additional.is_empty() {
            return Ok(());
        }
        let kvm_gid = std::fs::metadata("/dev/kvm")
            .map_err(|source| InitError::Io {
                what: "stat /dev/kvm".into(),
                source,
            })?
            .gid();
        let mut groups: Vec<Gid> = additional.iter().map(|g| Gid::from_raw(*g)).collect();
        groups.push(Gid::from_raw(kvm_gid));
        nix::unistd::setgroups(&groups).map_err(setup("set the additional groups"))?;
        let gid = Gid::from_raw(gid);
        nix::unistd::setresgid(gid, gid, gid).map_err(setup("set the group id"))?;
        let uid = Uid::from_raw(uid);
        nix::unistd::setresuid(uid, uid, uid).map_err(setup("set the user id"))
    }
}

/// `PR_SET_KEEPCAPS`: whether the permitted set survives a switch away from root.
fn keep_capabilities(keep: bool) -> Result<(), InitError> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, libc::c_ulong::from(keep), 0, 0, 0) };
    nix::errno::Errno::result(rc)
        .map(drop)
        .map_err(setup("set PR_SET_KEEPCAPS"))
}

/// Blocks opening the exec fifo for writing until `start` opens it for reading, then writes
/// the byte `start` waits for. The fifo is reached through the state directory's descriptor,
/// opened before the pivot.
fn wait_for_start(state_dir: &OwnedFd) -> Result<(), InitError> {
    let fd = nix::fcntl::openat(
        Some(state_dir.as_raw_fd()),
        crate::container::EXEC_FIFO,
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(setup("open the exec fifo"))?;
    // SAFETY: `openat` just returned this descriptor, owned by nobody else.
    let mut fifo = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    fifo.write_all(b"0").map_err(|source| InitError::Io {
        what: "write the exec fifo".into(),
        source,
    })
}

/// Boots the guest in this process and returns the container's exit status.
fn boot(config: &vmm::RunConfig) -> i32 {
    let timeline = vmm::report::timeline::Timeline::default();
    match vmm::launch::run(config, vmm::Console::inherit(), timeline) {
        Ok(report) => {
            if let Some(text) = report.outcome.message() {
                eprint!("{text}");
            }
            report.outcome.exit_status()
        }
        Err(err) => {
            eprintln!("flick-runtime: {}", chain(&err));
            VMM_ERROR
        }
    }
}

/// Closes every descriptor but stdio and `keep` (the container process runs no `exec`, so
/// close-on-exec does not help: the runtime's sockets and locks must not leak into it).
fn close_other_fds(keep: &[i32]) {
    let open: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return,
    };
    for fd in open {
        if fd > 2 && !keep.contains(&fd) {
            let _ = nix::unistd::close(fd);
        }
    }
}

/// Flushes stdout and exits without running destructors or `atexit` handlers inherited
/// from the runtime (this process is a fork).
fn exit_now(status: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit takes an integer and does not return.
    unsafe { libc::_exit(status) }
}

/// Sends `SIGKILL` to `pid` (cleanup of a failed create).
pub fn kill_now(pid: i32) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
}
