//! `vmm fleet`: many VMs from one VMM process, sharing nothing.

use serde_json::Value;
use std::collections::BTreeMap;
use tests::elf::ElfBuilder;
use tests::{asm, image, kvm_test, status, stderr, stdout, vmm, vmm_run, write_scratch};

fn fleet_json(args: &[&str]) -> Value {
    let mut all = vec!["fleet", "--json"];
    all.extend_from_slice(args);
    let out = vmm(&all);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", stdout(&out)))
}

#[kvm_test]
fn test_fleet_boots_every_instance() {
    let hello = image("hello");
    let report = fleet_json(&[
        hello.to_str().unwrap(),
        "--count",
        "20",
        "--concurrency",
        "2",
        "--",
        "x",
    ]);
    assert_eq!(report["count"], 20);
    let instances = report["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 20);
    for i in instances {
        assert_eq!(i["status"], 0, "{i}");
        assert_eq!(i["stdout"], "Hello from a unikernel!\nx\n", "{i}");
    }
    assert_eq!(report["outcomes"]["exit 0"], 20);
    assert!(report["launch_rate"].as_f64().unwrap() > 0.0);
    assert!(report["peak_concurrent"].as_u64().unwrap() <= 2);
}

#[kvm_test]
fn test_fleet_reused_vms_keep_nothing_of_the_instance_before() {
    let secret = format!("flick-f{:09}", std::process::id() % 1_000_000_000);
    let coded: String = secret.bytes().map(|b| char::from(b + 1)).collect();
    // Each instance looks for the secret everywhere it can read (4 MiB of RAM: its whole heap
    // stays within what a reused VM may have populated), then leaves it for the next.
    let image = image("secret");
    let args = [
        image.to_str().unwrap(),
        "--count",
        "12",
        "--concurrency",
        "1",
        "--mem",
        "4M",
    ];
    let report = fleet_json(&[&args[..], &["--", "relay", &coded]].concat());
    for i in report["instances"].as_array().unwrap() {
        assert_eq!(
            (&i["status"], &i["stdout"]),
            (&0.into(), &"clean\n".into()),
            "{i}"
        );
    }
    let reused = report["reused_vms"].as_u64().unwrap();
    assert!(
        reused >= 6,
        "only {reused} of 12 instances ran in a reused VM"
    );
    // The first instance cannot have: no instance ran before it (the VM made for the group's
    // reference, never run, was once counted as reused).
    assert!(reused < 12, "all 12 instances counted as reused");

    // The relay sees a secret left in its own VM: with reuse broken it would not be clean.
    let out = vmm(&["run", image.to_str().unwrap(), "--", "both", &secret]);
    assert_eq!(status(&out), 1, "{}", stdout(&out));

    let report = fleet_json(&[&args[..], &["--no-reuse", "--", "relay", &coded]].concat());
    assert_eq!(report["reused_vms"], 0);
    assert_eq!(report["outcomes"]["exit 0"], 12);
}

// A limit that lets one VM's RAM be locked but not two: the group is reused, and the VMs
// whose RAM could not be locked are destroyed instead of reused, counted and said, with the
// host's reason (they used to go without a word).
#[kvm_test]
fn test_fleet_vms_refused_reuse_are_counted_with_why() {
    let hello = image("hello");
    let out = std::process::Command::new("setpriv")
        .args([
            "--bounding-set=-ipc_lock",
            "--inh-caps=-ipc_lock",
            "prlimit",
        ])
        .args(["--memlock=6291456:6291456"])
        .arg(tests::vmm_bin())
        .args(["fleet", "--json", hello.to_str().unwrap(), "--count", "6"])
        .args(["--concurrency", "1", "--mem", "4M"])
        .output()
        .expect("setpriv and prlimit (util-linux)");
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcomes"]["exit 0"], 6, "{report}");
    let refused = report["refused_reuse"][0].as_str().unwrap_or_default();
    assert!(
        refused.starts_with("hello: ") && refused.contains("not locked in memory (mlock2: "),
        "{report}"
    );
    assert!(
        stderr(&out).contains("note: destroyed instead of reused: hello: "),
        "{}",
        stderr(&out)
    );
}

#[kvm_test]
fn test_fleet_under_a_low_memlock_limit_runs_every_instance_in_a_new_vm() {
    // Without CAP_IPC_LOCK and with a 64 KiB RLIMIT_MEMLOCK, guest RAM cannot be locked, so
    // no VM may be reused (a swapped-out page would escape the reset): said once, all run.
    let hello = image("hello");
    let out = std::process::Command::new("setpriv")
        .args([
            "--bounding-set=-ipc_lock",
            "--inh-caps=-ipc_lock",
            "prlimit",
        ])
        .args(["--memlock=65536:65536"])
        .arg(tests::vmm_bin())
        .args(["fleet", "--json", hello.to_str().unwrap(), "--count", "6"])
        .args(["--concurrency", "1"])
        .output()
        .expect("setpriv and prlimit (util-linux)");
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let warnings: Vec<&str> = std::str::from_utf8(&out.stderr).unwrap().lines().collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("not locked in memory"), "{warnings:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["reused_vms"], 0, "{report}");
    assert_eq!(report["outcomes"]["exit 0"], 6, "{report}");
    assert!(
        report["not_reused"][0]
            .as_str()
            .unwrap()
            .starts_with("hello: ")
    );
}

#[kvm_test]
fn test_fleet_creates_vms_ahead_and_reports_their_cost() {
    let hello = image("hello");
    let report = fleet_json(&[
        hello.to_str().unwrap(),
        "--count",
        "8",
        "--concurrency",
        "2",
        "--no-reuse",
    ]);
    assert_eq!(report["outcomes"]["exit 0"], 8);
    for i in report["instances"].as_array().unwrap() {
        // Creating a VM makes several KVM calls: never free, and not counted in its launch.
        assert!(i["create_us"].as_f64().unwrap() > 0.0, "{i}");
        assert!(i["latency_us"].as_f64().unwrap() > 0.0, "{i}");
    }
    assert!(report["create_us"]["p99"].as_f64().unwrap() > 0.0);
    assert!(report["cpu_s"].as_f64().unwrap() > 0.0, "{report}");
}

#[kvm_test]
fn test_fleet_instances_share_nothing() {
    let dir = tests::scratch_dir("fleet-mix");
    let spin = write_scratch("fleet-mix", "spin", &ElfBuilder::guest(&asm::SPIN).build());
    // Prints 64 KiB of its own code per exit, forever.
    let mut spam_code = vec![0x48, 0x83, 0xec, 0x20, 0x48, 0xc7, 0x04, 0x24];
    spam_code.extend((tests::elf::CODE_ADDR as u32).to_le_bytes());
    spam_code.extend([0xc7, 0x44, 0x24, 0x08, 0x00, 0x00, 0x01, 0x00]); // len 64 KiB
    spam_code.extend([0xc7, 0x44, 0x24, 0x0c, 0x01, 0x00, 0x00, 0x00]); // stdout
    spam_code.extend([0x89, 0xe0]); // mov eax, esp
    let top = spam_code.len();
    spam_code.extend([asm::mov_dx(abi::port::CONSOLE_WRITE), vec![asm::OUT_DX_EAX]].concat());
    let back = top as i64 - (spam_code.len() as i64 + 2);
    spam_code.extend([0xeb, back as i8 as u8]);
    let spam = write_scratch("fleet-mix", "spam", &ElfBuilder::guest(&spam_code).build());
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let manifest = format!(
        r#"
[[vm]]
image = "{hello}"
count = 6
args = ["alone", "together"]

[[vm]]
image = "{exitcode}"
count = 4
args = ["7"]

[[vm]]
image = "{fault}"
name = "crasher"
count = 3
args = ["null"]

[[vm]]
image = "{spin}"
count = 2
timeout = "300ms"

[[vm]]
image = "{spam}"
count = 2
max_output = "64K"

[[vm]]
image = "{panic}"
count = 2
"#,
        hello = path(&image("hello")),
        exitcode = path(&image("exitcode")),
        fault = path(&image("fault")),
        spin = path(&spin),
        spam = path(&spam),
        panic = path(&image("panic")),
    );
    let manifest_path = dir.join("mix.toml");
    std::fs::write(&manifest_path, manifest).unwrap();
    let report = fleet_json(&[
        "--manifest",
        manifest_path.to_str().unwrap(),
        "--concurrency",
        "2",
    ]);
    let instances = report["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 19);

    // What each kind gives when run alone, through `vmm run`.
    let alone = |image: &std::path::Path, flags: &[&str], args: &[&str]| {
        let out = vmm_run(image, flags, args);
        (status(&out), out.stdout)
    };
    let mut expected: BTreeMap<&str, (i32, Vec<u8>)> = BTreeMap::new();
    expected.insert("hello", alone(&image("hello"), &[], &["alone", "together"]));
    expected.insert("exitcode", alone(&image("exitcode"), &[], &["7"]));
    expected.insert("crasher", alone(&image("fault"), &[], &["null"]));
    expected.insert("spin", alone(&spin, &["--timeout", "300ms"], &[]));
    expected.insert("spam", alone(&spam, &["--max-output", "64K"], &[]));
    expected.insert("panic", alone(&image("panic"), &[], &[]));
    assert_eq!(expected["spin"].0, 124);
    assert_eq!(expected["spam"].0, 134);
    assert_eq!(expected["crasher"].0, 134);

    for i in instances {
        let group = i["group"].as_str().unwrap();
        let (status, out) = &expected[group];
        assert_eq!(
            i["status"].as_i64().unwrap(),
            i64::from(*status),
            "{group}: {i}"
        );
        assert_eq!(
            i["stdout"].as_str().unwrap(),
            String::from_utf8_lossy(out),
            "{group}"
        );
    }
    let outcomes = &report["outcomes"];
    assert_eq!(outcomes["exit 0"], 6);
    assert_eq!(outcomes["exit 7"], 4);
    assert_eq!(outcomes["exit 101"], 2);
    assert_eq!(outcomes["crashed"], 5);
    assert_eq!(outcomes["timed out"], 2);
}

#[kvm_test]
fn test_fleet_resident_holds_every_instance_at_once() {
    let idle = image("idle");
    let report = fleet_json(&[idle.to_str().unwrap(), "--count", "40", "--resident"]);
    assert_eq!(report["peak_concurrent"], 40);
    assert_eq!(report["outcomes"]["exit 0"], 40);
    for i in report["instances"].as_array().unwrap() {
        assert_eq!(i["stdout"], "released after holding 4096 bytes\n", "{i}");
    }
    assert!(report["memory"]["rss_at_peak_kib"].as_u64().unwrap() > 0);
}

#[kvm_test]
fn test_fleet_table_names_the_figures() {
    let out = vmm(&["fleet", image("hello").to_str().unwrap(), "--count", "4"]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    for label in [
        "launch rate",
        "start→exit",
        "outcomes",
        "peak VMs",
        "host memory",
    ] {
        assert!(text.contains(label), "{label} missing:\n{text}");
    }
}

#[test]
fn test_fleet_bad_manifest_is_refused() {
    let path = write_scratch("fleet-bad", "bad.toml", b"[[vm]]\nimage = 3\n");
    let out = vmm(&["fleet", "--manifest", path.to_str().unwrap()]);
    assert_eq!(status(&out), 125);
    assert!(
        stderr(&out).starts_with("error: manifest"),
        "{}",
        stderr(&out)
    );
    let out = vmm(&["fleet", "/nonexistent/image", "--count", "2"]);
    assert_eq!(status(&out), 125);
}

// A manifest entry's tap template counts its own instances: a failure names the entry and the
// number its template used (the fleet-wide position, interleaved with entry "a", said 1).
#[kvm_test]
fn test_fleet_tap_failure_names_the_entry_and_its_own_instance() {
    let hello = image("hello");
    let text = format!(
        "[[vm]]\nname = \"a\"\nimage = \"{hello}\"\ncount = 3\n\
         [[vm]]\nname = \"b\"\nimage = \"{hello}\"\ncount = 2\n\
         net = \"tap=flnosuch{{i}},ip=10.1.0.2/24\"\n",
        hello = hello.display()
    );
    let path = write_scratch("fleet-tap-names", "taps.toml", text.as_bytes());
    let out = vmm(&["fleet", "--manifest", path.to_str().unwrap()]);
    assert_eq!(status(&out), 125);
    assert!(
        stderr(&out)
            .starts_with("error: [[vm]] b instance 0: --net: no interface named 'flnosuch0'"),
        "{}",
        stderr(&out)
    );
}

#[kvm_test]
fn test_fleet_restores_resident_instances_from_a_snapshot() {
    let dir = tests::scratch_dir("fleet-snapshot");
    let snap = dir.join("idle.snap");
    tests::snapshot_image("idle", &snap);
    let report = fleet_json(&[snap.to_str().unwrap(), "--count", "20", "--resident"]);
    assert_eq!(report["peak_concurrent"], 20);
    assert_eq!(report["outcomes"]["exit 0"], 20, "{report}");
    assert!(report["memory"]["pss_at_peak_kib"].as_u64().unwrap() > 0);
}

#[kvm_test]
fn test_fleet_release_survives_a_guest_that_parks_forever() {
    // loop: out WAIT, eax
    let code = [
        asm::mov_dx(abi::port::WAIT),
        vec![asm::OUT_DX_EAX, 0xeb, 0xfd],
    ]
    .concat();
    let path = write_scratch("fleet-park", "parker", &ElfBuilder::guest(&code).build());
    let started = std::time::Instant::now();
    let report = fleet_json(&[path.to_str().unwrap(), "--count", "2", "--resident"]);
    assert!(started.elapsed().as_secs() < 60, "the release hung");
    assert_eq!(report["outcomes"]["crashed"], 2, "{report}");
    let first = &report["instances"][0];
    assert!(
        first["stderr"].as_str().unwrap().contains("parked again"),
        "{first}"
    );
}

#[kvm_test]
fn test_fleet_resident_warns_when_an_image_never_parks() {
    let hello = image("hello");
    let out = vmm(&[
        "fleet",
        hello.to_str().unwrap(),
        "--count",
        "2",
        "--resident",
    ]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: --resident: no instance of hello parked"),
        "{}",
        stderr(&out)
    );
    let idle = image("idle");
    let out = vmm(&[
        "fleet",
        idle.to_str().unwrap(),
        "--count",
        "2",
        "--resident",
    ]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

#[kvm_test]
fn test_fleet_cores_writes_one_core_per_crashed_instance() {
    let dir = tests::scratch_dir("fleet-cores");
    let fault = image("fault");
    let report = fleet_json(&[
        fault.to_str().unwrap(),
        "--count",
        "3",
        "--cores",
        dir.to_str().unwrap(),
        "--",
        "null",
    ]);
    for (index, instance) in report["instances"].as_array().unwrap().iter().enumerate() {
        let core = dir.join(format!("fault.{index}.core"));
        let err = instance["stderr"].as_str().unwrap();
        assert!(
            err.contains(&format!("core dumped to {}", core.display())),
            "{err}"
        );
        let bytes = std::fs::read(&core).unwrap();
        assert_eq!(&bytes[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([bytes[16], bytes[17]]), 4, "ET_CORE");
    }
    let out = vmm(&["fleet", fault.to_str().unwrap(), "--cores", "/nonexistent"]);
    assert_eq!(status(&out), 125);
    assert!(
        stderr(&out).contains("--cores /nonexistent: not a folder"),
        "{}",
        stderr(&out)
    );
}

#[kvm_test]
fn test_fleet_example_manifest_runs_its_mix() {
    // The README's example, with image paths relative to the manifest's folder.
    let manifest = tests::project_root().join("examples/mix.toml");
    image("hello");
    let report = fleet_json(&["--manifest", manifest.to_str().unwrap()]);
    assert_eq!(report["count"], 31, "{report}");
    let outcomes = &report["outcomes"];
    assert_eq!(outcomes["exit 0"], 24, "{report}");
    assert_eq!(outcomes["exit 3"], 5, "{report}");
    assert_eq!(outcomes["crashed"], 2, "{report}");
    let hello = report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["group"] == "hello")
        .unwrap();
    assert_eq!(
        hello["stdout"], "Hello from a unikernel!\nfrom\nthe\nmanifest\nGREETING=hi\n",
        "{hello}"
    );
}
