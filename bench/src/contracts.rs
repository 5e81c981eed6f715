//! The bench's copies of what it shares with the VMM, gathered here so that replacing them by
//! the VMM's own definitions is a change to this one file:
//! - the `vmm serve` wire format (`vmm/src/serve/wire.rs`: the [`frame`] kinds, `MAX_FRAME`,
//!   the length-prefixed JSON `Request`, the reply frames), spoken by the bench's in-process
//!   client and by the native warm pool;
//! - the `vmm fleet --json` report (`vmm/src/fleet/report.rs`, `FleetSummary`): the fields the
//!   bench reads;
//! - the `vmm run --timeline=json` line and its spawn-time variable
//!   (`vmm/src/report/timeline.rs`, `SPAWN_TIME_ENV`);
//! - the percentile helpers (`vmm/src/fleet/report.rs`, `percentile`). Note: `vmm fleet` picks
//!   the nearest rank, the bench interpolates between closest ranks; the bench recomputes our
//!   fleet's percentiles from the instances' latencies with [`percentile`] so that every row of
//!   its tables uses one method.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// Reply frame kinds (`vmm::serve::wire::frame`).
pub(crate) mod frame {
    /// Guest stdout bytes.
    pub(crate) const STDOUT: u8 = 1;
    /// Guest stderr bytes.
    pub(crate) const STDERR: u8 = 2;
    /// The exit status, `i32` little-endian; the last frame.
    pub(crate) const EXIT: u8 = 3;
    /// The request failed before the guest ran: one line; the last frame.
    pub(crate) const ERROR: u8 = 4;
}

/// The largest reply frame the bench accepts (`vmm::serve::wire::MAX_FRAME`).
pub(crate) const MAX_FRAME: u32 = 64 << 20;
/// Guest RAM a request asks for (snapshots bring their own size; the server needs the field).
const REQUEST_MEM_SIZE: u64 = 16 << 20;

/// A request as `vmm::serve::wire::Request` serialises it.
#[derive(Debug, Serialize)]
struct Request<'a> {
    target: &'a Path,
    args: &'a [String],
    env: &'a [String],
    timeout_ms: Option<u64>,
    max_output: u64,
    mem_size: u64,
}

/// The bytes of a request for `target` with `args`: a little-endian `u32` length, then JSON.
pub(crate) fn request_message(target: &Path, args: &[String]) -> Result<Vec<u8>> {
    let body = serde_json::to_vec(&Request {
        target,
        args,
        env: &[],
        timeout_ms: None,
        max_output: u64::from(MAX_FRAME),
        mem_size: REQUEST_MEM_SIZE,
    })
    .map_err(Error::json("cannot encode the request"))?;
    let len = u32::try_from(body.len())
        .map_err(|_| Error::Check(format!("request of {} bytes is too large", body.len())))?;
    let mut message = len.to_le_bytes().to_vec();
    message.extend_from_slice(&body);
    Ok(message)
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
        let mut head = [0u8; 5];
        stream.read_exact(&mut head).map_err(Error::io(
            "the server closed the connection before the exit status",
        ))?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        if len > MAX_FRAME {
            return Err(Error::Check(format!(
                "the server sent a frame of {len} bytes"
            )));
        }
        let mut payload = vec![0u8; len as usize];
        stream
            .read_exact(&mut payload)
            .map_err(Error::io("truncated frame"))?;
        match (head[0], <[u8; 4]>::try_from(payload.as_slice())) {
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
                    "the server sent a frame of kind {kind} and {len} bytes"
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
    /// The percentiles of `samples` (µs, any order), interpolated; `None` when empty.
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
}

/// `vmm fleet`'s host memory figures, KiB (`memory`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct Memory {
    /// `MemAvailable` before the fleet.
    pub(crate) mem_available_before_kib: u64,
    /// `MemAvailable` at the peak.
    pub(crate) mem_available_at_peak_kib: u64,
    /// `MemAvailable` after.
    pub(crate) mem_available_after_kib: u64,
    /// The VMM's RSS before.
    pub(crate) rss_before_kib: u64,
    /// Its RSS at the peak.
    pub(crate) rss_at_peak_kib: u64,
    /// Its VmHWM.
    pub(crate) rss_high_water_kib: u64,
    /// Its PSS at the peak.
    pub(crate) pss_at_peak_kib: u64,
}

/// One instance of `vmm fleet --json` (`instances[]`, the parts the bench checks).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Instance {
    /// Exit status.
    pub(crate) status: i32,
    /// Creation to exit (or to parked), µs.
    pub(crate) latency_us: f64,
    /// Its stdout.
    pub(crate) stdout: String,
    /// Its stderr.
    #[serde(default)]
    pub(crate) stderr: String,
}

/// `vmm fleet --json`, the parts the bench reads.
#[derive(Clone, Debug, Deserialize, Serialize)]
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
    /// Most alive at once.
    pub(crate) peak_concurrent: usize,
    /// Creation to exit (or parked), µs, as the VMM computes them (nearest rank).
    pub(crate) latency_us: Latency,
    /// Instances by outcome (`exit 0`, ...).
    pub(crate) outcomes: BTreeMap<String, usize>,
    /// Host memory.
    pub(crate) memory: Memory,
    /// `MemAvailable` drop per instance, KiB.
    pub(crate) mem_available_per_vm_kib: f64,
    /// VMM RSS growth per instance, KiB.
    pub(crate) rss_per_vm_kib: f64,
    /// Every instance (not repeated in the bench's JSON).
    #[serde(default, skip_serializing)]
    pub(crate) instances: Vec<Instance>,
}

impl VmmFleet {
    /// Whether every instance exited 0.
    pub(crate) fn all_exit_0(&self) -> bool {
        self.outcomes.get("exit 0") == Some(&self.count) && self.instances.len() == self.count
    }

    /// The instances' latencies, with the bench's percentile method.
    pub(crate) fn latency(&self) -> Option<Latency> {
        let samples: Vec<f64> = self.instances.iter().map(|i| i.latency_us).collect();
        Latency::of(&samples)
    }
}

/// Tells a launched VMM (or the floor) when it was spawned: `CLOCK_MONOTONIC`, ns.
pub(crate) const SPAWN_TIME_ENV: &str = "FLICK_SPAWN_NS";

/// One phase of a `--timeline=json` line.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub(crate) struct Phase {
    /// What was done.
    pub(crate) phase: String,
    /// How long it took, µs.
    pub(crate) duration_us: f64,
    /// When it ended, µs since the process was spawned (median over runs when summarised).
    #[serde(default)]
    pub(crate) since_start_us: f64,
}

/// A `--timeline=json` line: `{"phases":[…], …}` as the last line on stderr.
#[derive(Debug, Deserialize)]
pub(crate) struct TimelineLine {
    /// The phases in order.
    pub(crate) phases: Vec<Phase>,
    /// The rest of the object (exit counts, hypervisor, …), kept as it is.
    #[serde(flatten)]
    pub(crate) rest: serde_json::Map<String, Value>,
}

/// Parses the timeline: the last non-empty line of `stderr`.
pub(crate) fn parse_timeline(stderr: &str) -> Result<TimelineLine> {
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| Error::Check("nothing on stderr".to_owned()))?;
    serde_json::from_str(last.trim()).map_err(Error::json(format!("the last line: {last}")))
}

/// The `p`th percentile of non-empty sorted `sorted`, interpolating between closest ranks.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    let frac = rank - low as f64;
    sorted[low] + (sorted[high] - sorted[low]) * frac
}

/// The median of unsorted `values`; `None` when empty.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(percentile(&sorted, 50.0))
}

/// A `vmm fleet --json` report of two instances that exited 0, for tests.
#[cfg(test)]
pub(crate) const FLEET_JSON_EXAMPLE: &str = r#"{"count":2,"concurrency":2,"resident":false,"wall_s":0.01,
    "launch_rate":200.0,"peak_concurrent":2,
    "memory":{"mem_available_before_kib":1000,"mem_available_at_peak_kib":900,
      "mem_available_after_kib":990,"rss_before_kib":2000,"rss_at_peak_kib":2100,
      "rss_high_water_kib":2200,"pss_at_peak_kib":2050},
    "instances":[{"group":"hello","index":0,"status":0,"kind":"exited","latency_us":1.0,
      "stdout":"Hello from a unikernel!\n","stderr":""},
      {"group":"hello","index":1,"status":0,"kind":"exited","latency_us":2.0,
      "stdout":"Hello from a unikernel!\n","stderr":""}],
    "latency_us":{"max":2.0,"p50":1.0,"p90":2.0,"p99":2.0},
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
        r#""exits":{"total":3},"hypervisor":"pvm"}"#
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

    #[test]
    fn test_percentile_even_count_interpolates_median() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn test_percentile_p90_of_eleven_is_tenth_value() {
        let sorted: Vec<f64> = (0..=10).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 90.0), 9.0);
    }
}
