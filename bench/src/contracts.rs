//! What the bench shares with the VMM, taken from the VMM's own definitions (one place for
//! each contract), and the bench's thin views of them:
//! - the `vmm serve` wire format (`vmm::serve::wire`: frame kinds, `MAX_FRAME`, `Request`,
//!   framing), spoken by the bench's in-process client and by the native warm pool;
//! - the `vmm fleet --json` report (`vmm::fleet::FleetSummary`), read into [`VmmFleet`];
//! - the `vmm run --timeline=json` line (`vmm::report::timeline::TimelineRecord`) and its
//!   spawn-time variable;
//! - percentiles and medians (`vmm::report::stats`): one method for the VMM's reports and the
//!   bench's tables.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
pub(crate) use vmm::report::stats::{median, percentile};
pub(crate) use vmm::report::timeline::{PhaseRecord as Phase, SPAWN_TIME_ENV};
pub(crate) use vmm::serve::wire::{MAX_FRAME, frame};

/// Guest RAM a request asks for (snapshots bring their own size; the server needs the field).
const REQUEST_MEM_SIZE: u64 = 16 << 20;

/// The bytes of a request for `target` with `args`: a little-endian `u32` length, then JSON.
pub(crate) fn request_message(target: &Path, args: &[String]) -> Result<Vec<u8>> {
    let request = vmm::serve::wire::Request {
        target: target.to_owned(),
        args: args.to_vec(),
        env: Vec::new(),
        timeout_ms: None,
        max_output: u64::from(MAX_FRAME),
        mem_size: REQUEST_MEM_SIZE,
        // The bench's client sends no input: the guest's stdin is empty.
        volumes: Vec::new(),
        stdin: false,
        net: None,
    };
    vmm::serve::wire::encode_request(&request)
        .map_err(|e| Error::Check(format!("cannot encode the request: {e}")))
}

/// What a server answered.
#[derive(Debug, PartialEq)]
pub(crate) struct Reply {
    /// Everything in `STDOUT` frames.
    pub(crate) stdout: String,
    /// Everything in `STDERR` frames.
    pub(crate) stderr: String,
    /// The `EXIT` frame's status.
    pub(crate) status: i32,
}

/// Reads frames until the exit status; an `ERROR` frame or a malformed frame is an error.
pub(crate) fn read_reply(stream: &mut impl Read) -> Result<Reply> {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    loop {
        let (kind, payload) = vmm::serve::wire::read_frame(stream).map_err(|e| {
            Error::Check(format!(
                "the server closed the connection before the exit status: {e}"
            ))
        })?;
        match (kind, <[u8; 4]>::try_from(payload.as_slice())) {
            (frame::STDOUT, _) => stdout.extend_from_slice(&payload),
            (frame::STDERR, _) => stderr.extend_from_slice(&payload),
            (frame::EXIT, Ok(status)) => {
                return Ok(Reply {
                    stdout: String::from_utf8_lossy(&stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&stderr).into_owned(),
                    status: i32::from_le_bytes(status),
                });
            }
            (frame::ERROR, _) => {
                let line = String::from_utf8_lossy(&payload);
                return Err(Error::Check(format!("the server: {}", line.trim())));
            }
            (kind, _) => {
                return Err(Error::Check(format!(
                    "the server sent a frame of kind {kind} and {} bytes",
                    payload.len()
                )));
            }
        }
    }
}

/// Latency percentiles, µs (`latency_us` of `vmm fleet --json`).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
pub(crate) struct Latency {
    /// Median.
    pub(crate) p50: f64,
    /// 90th percentile.
    pub(crate) p90: f64,
    /// 99th percentile.
    pub(crate) p99: f64,
    /// Slowest.
    pub(crate) max: f64,
}

impl Latency {
    /// The percentiles of `samples` (µs, any order); `None` when empty.
    pub(crate) fn of(samples: &[f64]) -> Option<Latency> {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Latency {
            p50: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
            max: *sorted.last()?,
        })
    }

    fn from_map(map: &BTreeMap<String, f64>) -> Self {
        let at = |key: &str| map.get(key).copied().unwrap_or(0.0);
        Latency {
            p50: at("p50"),
            p90: at("p90"),
            p99: at("p99"),
            max: at("max"),
        }
    }
}

/// `vmm fleet`'s host memory figures, KiB (`memory`).
pub(crate) type Memory = vmm::fleet::report::MemoryFigures;

/// One instance of `vmm fleet --json`, the parts the bench checks.
#[derive(Clone, Debug)]
pub(crate) struct Instance {
    /// Exit status.
    pub(crate) status: i32,
    /// Creation to exit (or to parked), µs.
    pub(crate) latency_us: f64,
    /// Its stdout.
    pub(crate) stdout: String,
    /// Its stderr.
    pub(crate) stderr: String,
}

/// `vmm fleet --json` (a `vmm::fleet::FleetSummary`), as the bench keeps it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(from = "vmm::fleet::FleetSummary")]
pub(crate) struct VmmFleet {
    /// Instances.
    pub(crate) count: usize,
    /// Worker threads.
    pub(crate) concurrency: usize,
    /// All held at once.
    pub(crate) resident: bool,
    /// First creation to last exit (or last parked).
    pub(crate) wall_s: f64,
    /// Instances per second.
    pub(crate) launch_rate: f64,
    /// Instances per second of the VMM's CPU time (user and system), 0 if not reported.
    pub(crate) launches_per_cpu_s: f64,
    /// Most running at once (parked ones included).
    pub(crate) peak_concurrent: usize,
    /// Instances that ran in a reused VM.
    pub(crate) reused_vms: usize,
    /// A worker taking a VM created ahead → exit (or parked), µs.
    pub(crate) latency_us: Latency,
    /// Creating a VM ahead, µs: `p50`, `p99`.
    pub(crate) create_us: BTreeMap<String, f64>,
    /// Instances by outcome (`exit 0`, ...).
    pub(crate) outcomes: BTreeMap<String, usize>,
    /// Host memory.
    pub(crate) memory: Memory,
    /// `MemAvailable` drop per instance, KiB.
    pub(crate) mem_available_per_vm_kib: f64,
    /// VMM RSS growth per instance, KiB.
    pub(crate) rss_per_vm_kib: f64,
    /// Every instance (not repeated in the bench's JSON).
    #[serde(skip_serializing)]
    pub(crate) instances: Vec<Instance>,
}

impl From<vmm::fleet::FleetSummary> for VmmFleet {
    fn from(summary: vmm::fleet::FleetSummary) -> Self {
        let report = summary.report;
        Self {
            count: report.count,
            concurrency: report.concurrency,
            resident: report.resident,
            wall_s: report.wall_s,
            launch_rate: report.launch_rate,
            launches_per_cpu_s: report.launches_per_cpu_s(),
            peak_concurrent: report.peak_concurrent,
            reused_vms: report.reused_vms,
            latency_us: Latency::from_map(&summary.latency_us),
            create_us: summary.create_us,
            outcomes: summary.outcomes,
            memory: report.memory,
            mem_available_per_vm_kib: summary.mem_available_per_vm_kib,
            rss_per_vm_kib: summary.rss_per_vm_kib,
            instances: report
                .instances
                .into_iter()
                .map(|i| Instance {
                    status: i.status,
                    latency_us: i.latency_us,
                    stdout: i.stdout,
                    stderr: i.stderr,
                })
                .collect(),
        }
    }
}

impl VmmFleet {
    /// Whether every instance exited 0.
    pub(crate) fn all_exit_0(&self) -> bool {
        self.outcomes.get("exit 0") == Some(&self.count) && self.instances.len() == self.count
    }

    /// The instances' latencies.
    pub(crate) fn latency(&self) -> Option<Latency> {
        let samples: Vec<f64> = self.instances.iter().map(|i| i.latency_us).collect();
        Latency::of(&samples)
    }
}

/// A `--timeline=json` line (`vmm::report::timeline::TimelineRecord`): the phases, and the
/// rest of the record kept as JSON for the report.
#[derive(Debug)]
pub(crate) struct TimelineLine {
    /// The phases in order.
    pub(crate) phases: Vec<Phase>,
    /// The rest of the record (exit counts, hypervisor, …).
    pub(crate) rest: serde_json::Map<String, Value>,
}

/// Parses the timeline: the last non-empty line of `stderr`.
pub(crate) fn parse_timeline(stderr: &str) -> Result<TimelineLine> {
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| Error::Check("nothing on stderr".to_owned()))?;
    let record: vmm::report::timeline::TimelineRecord =
        serde_json::from_str(last.trim()).map_err(Error::json(format!("the last line: {last}")))?;
    let mut rest = match serde_json::to_value(&record) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    rest.remove("phases");
    Ok(TimelineLine {
        phases: record.phases,
        rest,
    })
}

/// A `vmm fleet --json` report of two instances that exited 0, for tests.
#[cfg(test)]
pub(crate) const FLEET_JSON_EXAMPLE: &str = r#"{"count":2,"concurrency":2,"resident":false,"wall_s":0.01,
    "launch_rate":200.0,"cpu_s":0.004,"peak_concurrent":2,
    "memory":{"mem_available_before_kib":1000,"mem_available_at_peak_kib":900,
      "mem_available_after_kib":990,"rss_before_kib":2000,"rss_at_peak_kib":2100,
      "rss_high_water_kib":2200,"pss_at_peak_kib":2050},
    "instances":[{"group":"hello","index":0,"status":0,"kind":"exited","latency_us":1.0,
      "stdout":"Hello from a unikernel!\n","stderr":""},
      {"group":"hello","index":1,"status":0,"kind":"exited","latency_us":2.0,
      "stdout":"Hello from a unikernel!\n","stderr":""}],
    "latency_us":{"max":2.0,"p50":1.0,"p90":2.0,"p99":2.0},
    "create_us":{"p50":300.0,"p99":900.0},
    "outcomes":{"exit 0":2},"mem_available_per_vm_kib":50.0,"rss_per_vm_kib":50.0}"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn test_read_reply_collects_output_until_exit() {
        let mut wire = frame(frame::STDOUT, b"Hello ");
        wire.extend(frame(frame::STDERR, b"warn\n"));
        wire.extend(frame(frame::STDOUT, b"world\n"));
        wire.extend(frame(frame::EXIT, &7i32.to_le_bytes()));
        let reply = read_reply(&mut wire.as_slice()).unwrap();
        let expected = Reply {
            stdout: "Hello world\n".into(),
            stderr: "warn\n".into(),
            status: 7,
        };
        assert_eq!(reply, expected);
    }

    #[test]
    fn test_read_reply_error_frame_is_an_error() {
        let wire = frame(frame::ERROR, b"error: no such snapshot");
        let err = read_reply(&mut wire.as_slice()).unwrap_err();
        assert!(err.to_string().contains("no such snapshot"), "{err}");
    }

    #[test]
    fn test_read_reply_eof_before_exit_is_an_error() {
        let wire = frame(frame::STDOUT, b"Hello");
        assert!(read_reply(&mut wire.as_slice()).is_err());
    }

    #[test]
    fn test_read_reply_short_exit_frame_is_an_error() {
        let wire = frame(frame::EXIT, &[0, 0]);
        assert!(read_reply(&mut wire.as_slice()).is_err());
    }

    #[test]
    fn test_request_message_is_length_prefixed_json() {
        let message = request_message(Path::new("/t/hello.snap"), &["a".into()]).unwrap();
        let len = u32::from_le_bytes(message[..4].try_into().unwrap()) as usize;
        assert_eq!(len, message.len() - 4);
        let body: Value = serde_json::from_slice(&message[4..]).unwrap();
        assert_eq!(body["target"], "/t/hello.snap");
        assert_eq!(body["args"], serde_json::json!(["a"]));
        assert_eq!(body["timeout_ms"], Value::Null);
    }

    #[test]
    fn test_vmm_fleet_json_parses_and_all_exit_0() {
        let fleet: VmmFleet = serde_json::from_str(FLEET_JSON_EXAMPLE).unwrap();
        assert_eq!(fleet.latency_us.p50, 1.0);
        assert_eq!(fleet.memory.pss_at_peak_kib, 2050);
        assert_eq!(fleet.launches_per_cpu_s, 500.0);
        assert_eq!(fleet.create_us["p99"], 900.0);
        assert!(fleet.all_exit_0());
    }

    #[test]
    fn test_vmm_fleet_with_a_crash_is_not_all_exit_0() {
        let json = FLEET_JSON_EXAMPLE.replace(r#"{"exit 0":2}"#, r#"{"exit 0":1,"crashed":1}"#);
        let fleet: VmmFleet = serde_json::from_str(&json).unwrap();
        assert!(!fleet.all_exit_0());
    }

    #[test]
    fn test_vmm_fleet_latency_is_recomputed_by_interpolation() {
        let fleet: VmmFleet = serde_json::from_str(FLEET_JSON_EXAMPLE).unwrap();
        assert_eq!(fleet.latency().unwrap().p50, 1.5);
    }

    const LINE: &str = concat!(
        r#"{"phases":[{"phase":"open /dev/kvm","duration_us":12.5,"since_start_us":80.0},"#,
        r#"{"phase":"run","duration_us":100.0,"since_start_us":300.0}],"#,
        r#""exits":{"total":3,"io_out":{"0x500":1},"io_in":{},"mmio":0,"other":0},"#,
        r#""console_bytes":24,"ram_pages_touched":16,"hypervisor":"pvm","exit_status":0}"#
    );

    #[test]
    fn test_parse_timeline_last_line_is_the_timeline() {
        let line = parse_timeline(&format!("some log\n{LINE}\n")).unwrap();
        assert_eq!(line.phases.len(), 2);
        assert_eq!(line.phases[0].phase, "open /dev/kvm");
        assert_eq!(line.rest["hypervisor"], "pvm");
    }

    #[test]
    fn test_parse_timeline_usage_error_is_an_error() {
        let stderr = "error: unexpected argument '--timeline' found (see 'vmm --help')\n";
        assert!(parse_timeline(stderr).is_err());
    }
}
