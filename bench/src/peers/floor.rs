//! The floor: the smallest C program that does only the KVM calls a boot needs, built static
//! like the native hello. It opens `/dev/kvm`, creates a VM with one memory slot of 2 MiB and
//! one vCPU (CPUID: one entry, long mode), writes four-level page tables (one 2 MiB user page),
//! a TSS whose I/O bitmap opens one port, a message and six bytes of code, sets the registers
//! to start at CPL 3 in long mode as ours does, and runs. The guest writes the message's
//! address to the port with one `out` (one exit, as ours prints); the floor checks the exit,
//! prints the message from guest memory, tears the VM down and exits 0.
//!
//! `floor --timeline` also prints its phases as one JSON line on stderr, in the format of
//! `vmm run --timeline=json` and with the same names where the work is the same, so that the
//! report can set the two boots side by side. `floor --hold N` boots N such VMs in one process
//! and keeps them all alive at once: what the host kernel and the hypervisor hold for a minimal
//! VM, the platform's part of our memory per resident VM.

use super::native::compile;
use super::peer::{Peer, Setup};
use crate::error::Result;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the floor prints when its guest ran.
pub(crate) const MESSAGE: &str = "Hello from the floor!\n";

/// The program.
const FLOOR_C: &str = r#"#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* Guest-physical layout: one 2 MiB slot at 0, identity-mapped by one user page. */
#define RAM_SIZE (2u << 20)
#define PML4 0x1000
#define PDPT 0x2000
#define PD 0x3000
#define TSS 0x4000
#define CODE 0x5000
#define MESSAGE 0x6000
#define PORT 0x500
#define TSS_BASE_SIZE 104
/* The bitmap covers ports 0..PORT+7; the CPU may read one byte past it (all ones). */
#define TSS_LIMIT (TSS_BASE_SIZE + PORT / 8 + 1)
#define PTE_PRESENT 1
#define PTE_WRITE 2
#define PTE_USER 4
#define PTE_LARGE 0x80

static const char message[] = "Hello from the floor!\n";
/* mov dx, PORT; mov eax, MESSAGE; out dx, eax; jmp $ */
static const uint8_t code[] = {0x66, 0xba, PORT & 0xff, PORT >> 8, 0xb8, MESSAGE & 0xff,
                               MESSAGE >> 8, 0, 0, 0xef, 0xeb, 0xfe};

static int timing;
static uint64_t start_ns;
static struct {
    const char *name;
    uint64_t at;
} phases[16];
static int nphases;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void mark(const char *name) {
    if (timing && nphases < 16) {
        phases[nphases].name = name;
        phases[nphases++].at = now_ns();
    }
}

static int fail(const char *what) {
    fprintf(stderr, "floor: %s: %s\n", what, strerror(errno));
    return 1;
}

static void print_timeline(void) {
    fprintf(stderr, "{\"phases\":[");
    uint64_t previous = start_ns;
    for (int i = 0; i < nphases; i++) {
        fprintf(stderr, "%s{\"phase\":\"%s\",\"duration_us\":%.1f,\"since_start_us\":%.1f}",
                i ? "," : "", phases[i].name, (phases[i].at - previous) / 1e3,
                (phases[i].at - start_ns) / 1e3);
        previous = phases[i].at;
    }
    /* The rest of the record of `vmm run --timeline=json`, which the bench parses alike. */
    fprintf(stderr,
            "],\"exits\":{\"total\":1,\"io_out\":{\"0x%x\":1},\"io_in\":{},\"mmio\":0,"
            "\"other\":0},\"console_bytes\":%zu,\"ram_pages_touched\":null,"
            "\"hypervisor\":\"%s\",\"exit_status\":0}\n",
            PORT, sizeof message - 1, access("/sys/module/kvm_pvm", F_OK) == 0 ? "pvm" : "kvm");
}

static struct kvm_segment segment(uint16_t selector, uint8_t type, int code_segment) {
    struct kvm_segment s = {.base = 0, .limit = 0xffffffff, .selector = selector, .type = type,
                            .present = 1, .dpl = 3, .db = !code_segment, .s = 1,
                            .l = code_segment, .g = 1};
    return s;
}

/* A booted VM: its fds and mappings. */
struct booted {
    int vm, vcpu, run_size;
    uint8_t *ram;
    struct kvm_run *run;
};

/* Creates a VM through `kvm` and runs its guest to its one exit (the `out`). */
static int boot(int kvm, struct booted *b) {
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0)
        return fail("KVM_CREATE_VM");
    mark("create VM");
    uint8_t *ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (ram == MAP_FAILED)
        return fail("mmap guest RAM");
    mark("guest RAM mapped");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = RAM_SIZE,
        .userspace_addr = (uint64_t)(uintptr_t)ram};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        return fail("KVM_SET_USER_MEMORY_REGION");
    mark("register guest RAM");
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0)
        return fail("KVM_CREATE_VCPU");
    struct {
        struct kvm_cpuid2 head;
        struct kvm_cpuid_entry2 entries[1];
    } cpuid = {.head = {.nent = 1},
               .entries = {{.function = 0x80000001, .edx = 1u << 29 /* long mode */}}};
    if (ioctl(vcpu, KVM_SET_CPUID2, &cpuid) < 0)
        return fail("KVM_SET_CPUID2");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < (int)sizeof(struct kvm_run))
        return fail("KVM_GET_VCPU_MMAP_SIZE");
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        return fail("mmap kvm_run");
    mark("create vCPU, set CPUID");

    uint64_t *pml4 = (uint64_t *)(ram + PML4), *pdpt = (uint64_t *)(ram + PDPT);
    uint64_t *pd = (uint64_t *)(ram + PD);
    pml4[0] = PDPT | PTE_PRESENT | PTE_WRITE | PTE_USER;
    pdpt[0] = PD | PTE_PRESENT | PTE_WRITE | PTE_USER;
    pd[0] = 0 | PTE_PRESENT | PTE_WRITE | PTE_USER | PTE_LARGE;
    uint8_t *tss = ram + TSS;
    tss[102] = TSS_BASE_SIZE; /* I/O map base */
    memset(tss + TSS_BASE_SIZE, 0xff, TSS_LIMIT + 1 - TSS_BASE_SIZE);
    tss[TSS_BASE_SIZE + PORT / 8] &= ~(0xf << (PORT % 8)); /* a 4-byte out at PORT */
    memcpy(ram + MESSAGE, message, sizeof message);
    memcpy(ram + CODE, code, sizeof code);
    mark("page tables, TSS, code");

    struct kvm_sregs sregs;
    memset(&sregs, 0, sizeof sregs);
    sregs.cs = segment(0x23, 0xb, 1);
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = segment(0x1b, 0x3, 0);
    struct kvm_segment tr = {.base = TSS, .limit = TSS_LIMIT, .selector = 0x28, .type = 0xb,
                             .present = 1};
    sregs.tr = tr;
    sregs.ldt.unusable = 1;
    sregs.cr0 = 1u | 1u << 4 | 1u << 5 | 1u << 16 | 1u << 31; /* PE ET NE WP PG */
    sregs.cr3 = PML4;
    sregs.cr4 = 1u << 5;                  /* PAE */
    sregs.efer = 1u << 8 | 1u << 10;      /* LME LMA */
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
        return fail("KVM_SET_SREGS");
    struct kvm_regs regs = {.rip = CODE, .rsp = RAM_SIZE, .rflags = 2};
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
        return fail("KVM_SET_REGS");
    mark("registers");

    if (ioctl(vcpu, KVM_RUN, 0) < 0)
        return fail("KVM_RUN");
    mark("first KVM_RUN → first exit");
    if (run->exit_reason != KVM_EXIT_IO || run->io.direction != KVM_EXIT_IO_OUT ||
        run->io.port != PORT || run->io.size != 4 || run->io.count != 1) {
        fprintf(stderr, "floor: unexpected exit %u (port 0x%x)\n", run->exit_reason,
                run->io.port);
        return 1;
    }
    *b = (struct booted){.vm = vm, .vcpu = vcpu, .run_size = run_size, .ram = ram, .run = run};
    return 0;
}

static long mem_available_kib(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    char line[128];
    long kib = -1;
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "MemAvailable: %ld kB", &kib) == 1)
            break;
    if (f != NULL)
        fclose(f);
    return kib;
}

/* `floor --hold N`: N VMs booted and alive at once in this process; prints the drop of
   MemAvailable per VM (what the host kernel and the hypervisor hold for a minimal VM: its
   structures, the guest's few touched pages, the kvm_run page) as one JSON line. */
static int hold(int kvm, long count) {
    if (count < 1 || count > 100000) {
        fprintf(stderr, "floor: --hold takes 1 to 100000\n");
        return 1;
    }
    struct rlimit files; /* two fds per VM */
    if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
        files.rlim_cur = files.rlim_max;
        setrlimit(RLIMIT_NOFILE, &files);
    }
    struct booted *all = calloc((size_t)count, sizeof *all);
    if (all == NULL)
        return fail("calloc");
    long before = mem_available_kib();
    for (long i = 0; i < count; i++)
        if (boot(kvm, &all[i]) != 0)
            return 1;
    long at_peak = mem_available_kib();
    printf("{\"held\":%ld,\"mem_available_before_kib\":%ld,\"mem_available_at_peak_kib\":%ld,"
           "\"mem_available_per_vm_kib\":%.1f}\n",
           count, before, at_peak, (double)(before - at_peak) / (double)count);
    for (long i = 0; i < count; i++) {
        munmap(all[i].run, (size_t)all[i].run_size);
        close(all[i].vcpu);
        close(all[i].vm);
        munmap(all[i].ram, RAM_SIZE);
    }
    return 0;
}

int main(int argc, char **argv) {
    timing = argc > 1 && strcmp(argv[1], "--timeline") == 0;
    start_ns = now_ns();
    const char *spawn = getenv("FLICK_SPAWN_NS");
    if (timing && spawn != NULL)
        start_ns = strtoull(spawn, NULL, 10);
    mark("process start → main");

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        return fail("open /dev/kvm");
    mark("open /dev/kvm");
    if (argc > 2 && strcmp(argv[1], "--hold") == 0)
        return hold(kvm, strtol(argv[2], NULL, 10));
    struct booted b;
    if (boot(kvm, &b) != 0)
        return 1;
    int vm = b.vm, vcpu = b.vcpu, run_size = b.run_size;
    uint8_t *ram = b.ram;
    struct kvm_run *run = b.run;
    uint32_t address;
    memcpy(&address, (uint8_t *)run + run->io.data_offset, sizeof address);
    const char *text = (const char *)ram + address;
    size_t room = address < RAM_SIZE ? RAM_SIZE - address : 0;
    size_t len = room ? strnlen(text, room) : 0;
    if (len == 0 || len == room || write(1, text, len) != (ssize_t)len)
        return fail("guest output");
    mark("guest output written");

    munmap(run, run_size);
    close(vcpu);
    close(vm);
    munmap(ram, RAM_SIZE);
    close(kvm);
    mark("VM teardown");
    if (timing)
        print_timeline();
    return 0;
}
"#;

/// Builds the floor into `dir/floor`.
pub(crate) fn build(dir: &Path) -> Result<PathBuf> {
    compile(dir, "floor", FLOOR_C)
}

/// The floor as a peer.
pub(crate) fn setup(dir: &Path) -> Setup {
    match build(dir) {
        Ok(program) => {
            let what = "the floor: a static C program doing only the KVM calls of a boot \
                        (CPL 3 guest, one `out`, VM closed before exit)"
                .to_owned();
            Setup::Ready(Peer::new(dir, "floor", what, program, Vec::new(), MESSAGE))
        }
        Err(err) => Setup::failed("floor", &err),
    }
}

/// What `floor --hold N` prints.
#[derive(serde::Deserialize)]
pub(crate) struct Held {
    /// VMs alive at once.
    pub(crate) held: usize,
    /// The drop of `MemAvailable` from before the first VM to all N alive, per VM, KiB.
    pub(crate) mem_available_per_vm_kib: f64,
}

/// Runs `floor --hold count` and reads its line.
pub(crate) fn hold(program: &Path, count: usize) -> Result<Held> {
    let output = Command::new(program)
        .args(["--hold", &count.to_string()])
        .output()
        .map_err(crate::error::Error::io("cannot run the floor"))?;
    if !output.status.success() {
        return Err(crate::error::Error::tool(
            "floor --hold",
            output.status,
            &output.stderr,
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.trim())
        .map_err(|err| crate::error::Error::Check(format!("floor --hold printed {text:?}: {err}")))
}

/// A `floor --timeline` command (phases on stderr).
pub(crate) fn timeline_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg("--timeline");
    cmd
}
