//! The cold-start report as Markdown: the machine and the method, the cold rows (both clocks,
//! ratios to the native process and to the floor), the warm rows (ratio to their like), the
//! back-to-back rows, the targets, snapshot memory, our phases beside the floor's, the compute
//! comparison, and a README-ready block stating machine and date that can be pasted as it is.

use super::format::{cell, kib, ms, peak_rss, readme_label, short_label};
use super::{PeerReport, Report};
use crate::contracts::Phase;
use crate::measure::Part;
use crate::measure::timeline::Timeline;
use crate::sha256::{self, Comparison};
use crate::snapmem::SnapshotMemory;
use std::fmt::Write as _;

impl Report {
    /// The report as Markdown.
    pub(crate) fn markdown(&self) -> String {
        let m = &self.machine;
        let mut md = format!("# flick cold-start bench, {}\n\n", m.date);
        let _ = writeln!(md, "{}\n", machine_line(self));
        let _ = writeln!(
            md,
            "{} timed runs per peer, interleaved (A B C A B C ...) after one untimed warm-up \
             run each; every run is verified (exit status and output) and follows a {} ms \
             pause, so it starts on an idle CPU as a real cold start does. Two clocks: \
             **returned** is spawn → `wait4` of the command (what a user waits for); **until \
             done** is spawn → the last process of the command's process group reaped, the \
             bench being a child subreaper (what the machine pays: our VMM hands VM teardown to \
             a helper process that outlives it). Peak RSS is `ru_maxrss` of the process tree, \
             median of {} untimed runs under a tiny static spawner (a child of the bench would \
             carry the bench's RSS, which Linux records at `execve`).\n",
            self.runs_per_peer, self.settle_ms, self.rss_probe_runs
        );
        md.push_str(&self.cold_table(true));
        md.push_str(&reaped_note(&self.peers));
        md.push_str(&self.warm_table(true));
        md.push_str(&self.back_to_back_table());
        md.push_str(&self.targets_table());
        md.push_str(&snapshot_section(self.snapshot_memory.as_ref()));
        md.push_str(&timeline_section(
            self.timeline.as_ref(),
            self.floor_timeline.as_ref(),
        ));
        md.push_str(&sha256_section(self.sha256.as_ref()));
        md.push_str(&io_section(self.io.as_ref()));
        md.push_str(&self.readme_block());
        md
    }

    /// The cold rows; `what` adds the long description column.
    fn cold_table(&self, what: bool) -> String {
        let rows: Vec<&PeerReport> = self.peers.iter().filter(|p| !p.is_warm()).collect();
        if rows.is_empty() {
            return String::new();
        }
        let mut md = String::from("\n## Cold starts: a fresh process (or VM) per run\n\n");
        md.push_str(
            "| peer | min | median | p90 | p99 | until done | peak RSS | × native | × floor |",
        );
        md.push_str(if what { " what |\n" } else { "\n" });
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        md.push_str(if what { "---|\n" } else { "\n" });
        for peer in rows {
            let ratio = |x: Option<f64>| x.map_or_else(|| "–".to_owned(), |x| format!("{x:.2}×"));
            let cells = peer.summary.map(|s| {
                let done = peer.done.map_or_else(
                    || "–".to_owned(),
                    |d| match peer.done_ratio_to_native {
                        Some(r) => format!("{} ({r:.2}×)", ms(d.median_us)),
                        None => ms(d.median_us),
                    },
                );
                vec![
                    ms(s.min_us),
                    ms(s.median_us),
                    ms(s.p90_us),
                    ms(s.p99_us),
                    done,
                    peak_rss(peer.peak_rss_kib),
                    ratio(peer.ratio_to_like),
                    ratio(peer.ratio_to_floor),
                ]
            });
            md.push_str(&row(peer, cells, 8, what));
        }
        md
    }

    /// The warm rows; `what` adds the long description column.
    fn warm_table(&self, what: bool) -> String {
        let rows: Vec<&PeerReport> = self.peers.iter().filter(|p| p.is_warm()).collect();
        if rows.is_empty() {
            return String::new();
        }
        let mut md = String::from(
            "\n## Warm: a request to something started ahead\n\n\
             Each warm row gets an instance in the state of a fresh one per request, started \
             ahead: serve reuses a VM whose guest exited cleanly, returned to a fresh VM's state \
             after the reply (memory, registers, FPU, devices, boot info, seed); serve (fresh \
             VMs) destroys it and creates another, as the native pool does with its processes; \
             pools refill after the reply. serve, serve (fresh VMs) and the native pool are \
             timed from the bench's own in-process client, connect and send → exit-status frame \
             (stdout and status checked), and compared with each other: warm with warm. serve \
             (process) is a fresh `vmm run --via` client process, compared with the fresh \
             native process.\n\n",
        );
        md.push_str("| peer | min | median | p90 | p99 | peak RSS | × its like | like |");
        md.push_str(if what { " what |\n" } else { "\n" });
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---|");
        md.push_str(if what { "---|\n" } else { "\n" });
        for peer in rows {
            let cells = peer.summary.map(|s| {
                vec![
                    ms(s.min_us),
                    ms(s.median_us),
                    ms(s.p90_us),
                    ms(s.p99_us),
                    peak_rss(peer.peak_rss_kib),
                    peer.ratio_to_like
                        .map_or_else(|| "–".to_owned(), |x| format!("{x:.2}×")),
                    short_label(peer.like).to_owned(),
                ]
            });
            md.push_str(&row(peer, cells, 7, what));
        }
        md
    }

    fn back_to_back_table(&self) -> String {
        if self.back_to_back.is_empty() {
            return String::new();
        }
        let mut md = format!(
            "\n## Back to back\n\nRuns with no pause in between, as a script calling the \
             command in a loop makes them: bursts of {} timed runs after one untimed run, \
             interleaved across peers; each run timed until its command returned and verified \
             (our VMM's teardown helpers are left to init, as in a shell). Loop time / run: the \
             bursts' wall time over their runs, the bench's own spawn, wait and check \
             included.\n\n\
             | peer | runs | median | p90 | loop time / run | × native |\n\
             |---|---:|---:|---:|---:|---:|\n",
            crate::session::BURST
        );
        for b in &self.back_to_back {
            let name = bold_ours(b.runs.name);
            match (&b.summary, &b.runs.failure) {
                (Some(s), None) => {
                    let _ = writeln!(
                        md,
                        "| {name} | {} | {} | {} | {} | {} |",
                        b.runs.samples_us.len(),
                        ms(s.median_us),
                        ms(s.p90_us),
                        ms(b.runs.loop_per_run_us),
                        b.ratio_to_native
                            .map_or_else(|| "–".to_owned(), |x| format!("{x:.2}×"))
                    );
                }
                (_, failure) => {
                    let why = failure.as_deref().unwrap_or("no runs");
                    let _ = writeln!(md, "| {name} | – | failed | – | – | {} |", cell(why));
                }
            }
        }
        md
    }

    fn targets_table(&self) -> String {
        if self.targets.is_empty() {
            return String::new();
        }
        let mut md = String::from(
            "\n## Targets\n\nJudged on the medians above (until the command returned, unless \
             the target says otherwise): cold rows against cold rows, warm against warm.\n\n\
             | kind | target | measured | met |\n|---|---|---|---|\n",
        );
        for t in &self.targets {
            let met = if t.met { "yes" } else { "**no**" };
            let _ = writeln!(md, "| {} | {} | {} | {met} |", t.kind, t.target, t.measured);
        }
        md
    }

    /// The block for README: machine and date, then the tables without the long descriptions.
    fn readme_block(&self) -> String {
        let mut md = String::from("\n<!-- from the bench report; do not edit by hand -->\n");
        let _ = writeln!(
            md,
            "`cargo xtask bench`, {}: {} ({} runs per peer, medians).",
            self.machine.date,
            machine_line(self),
            self.runs_per_peer
        );
        md.push_str(&self.cold_table(false));
        md.push_str(&self.warm_table(false));
        md.push_str(&self.back_to_back_table());
        md.push_str(&self.targets_table());
        let md = md.replace("\n## ", "\n#### ");
        format!("\n## For README (paste as it is)\n{md}")
    }
}

/// "Machine: …" in one line.
fn machine_line(report: &Report) -> String {
    let m = &report.machine;
    format!(
        "Linux {}, {} ({} cores), /dev/kvm: {}; load average at the end {}",
        m.kernel, m.cpu, m.cores, m.kvm, m.loadavg
    )
}

/// The note under the cold table: how many processes each row left behind to reap.
fn reaped_note(peers: &[PeerReport]) -> String {
    let notes: Vec<String> = peers
        .iter()
        .filter(|p| p.status == "ok")
        .filter_map(|p| {
            let (low, high) = p.reaped_per_run?;
            (high > 0).then(|| {
                let n = if low == high {
                    low.to_string()
                } else {
                    format!("{low}-{high}")
                };
                format!("{} {n}", short_label(p.result.name))
            })
        })
        .collect();
    if notes.is_empty() {
        return "\nNo peer left a process behind after its command returned.\n".to_owned();
    }
    format!(
        "\nProcesses reaped after the command returned, per run: {} (every other peer: none).\n",
        notes.join(", ")
    )
}

/// One table row: the name, then `cells` (or, for a peer without a summary, why it is
/// missing, spread over `width` cells), then the description when `what`.
fn row(peer: &PeerReport, cells: Option<Vec<String>>, width: usize, what: bool) -> String {
    let r = &peer.result;
    let name = if what {
        bold_ours(r.name)
    } else {
        readme_label(r.name).to_owned()
    };
    let (cells, description) = match (cells, &r.install, &r.failure) {
        (Some(cells), _, _) => (cells, cell(&r.what)),
        (None, Some(install), _) => (status_cells("not installed", width), format!("`{install}`")),
        (None, None, failure) => (
            status_cells("failed", width),
            cell(failure.as_deref().unwrap_or("no runs")),
        ),
    };
    let mut line = format!("| {name} | {} |", cells.join(" | "));
    if what || cells_say_why(&cells) {
        let _ = write!(line, " {description} |");
    }
    line.push('\n');
    line
}

fn status_cells(status: &str, width: usize) -> Vec<String> {
    let mut cells = vec!["–".to_owned(); width];
    cells[1] = status.to_owned();
    cells
}

fn cells_say_why(cells: &[String]) -> bool {
    cells.iter().any(|c| c == "failed" || c == "not installed")
}

fn bold_ours(name: &str) -> String {
    if name == "ours" {
        "**ours**".to_owned()
    } else {
        short_label(name).to_owned()
    }
}

fn snapshot_section(memory: Option<&Part<SnapshotMemory>>) -> String {
    let Some(memory) = memory else {
        return String::new();
    };
    let mut md = String::from("\n## Memory of restored VMs\n\n");
    match memory {
        Part::Missing { unavailable } => {
            let _ = writeln!(md, "Failed: {}.", cell(unavailable));
        }
        Part::Done(m) => {
            let _ = writeln!(
                md,
                "{} resident VMs restored from one snapshot of `idle` (`vmm fleet \
                 idle.snap --count {} --resident`): PSS of the VMM at the peak / VMs (its own \
                 pages included; the snapshot's pages shared through the page cache) \
                 **{:.0} KiB**, RSS growth / VM {:.0} KiB, MemAvailable drop / VM (kernel \
                 included) {:.0} KiB (measured once MemAvailable was steady, after {:.0} s{}; it \
                 moved {} in the last second: about ±{} per VM of the host's own noise).",
                m.count,
                m.count,
                m.pss_per_vm_kib,
                m.rss_per_vm_kib,
                m.mem_available_per_vm_kib,
                m.settled.waited_s,
                if m.settled.steady {
                    ""
                } else {
                    ", still moving"
                },
                kib(m.settled.last_move_kib as f64),
                kib(m.settled.last_move_kib as f64 / m.count.max(1) as f64)
            );
        }
    }
    md
}

/// Our phases beside the floor's: rows in our order, matched by name, then the floor's own.
fn timeline_section(ours: Option<&Part<Timeline>>, floor: Option<&Part<Timeline>>) -> String {
    if ours.is_none() && floor.is_none() {
        return String::new();
    }
    let mut md = String::from("\n## Our boot beside the floor, phase by phase\n\n");
    let (ours, floor) = (done(ours, "Ours", &mut md), done(floor, "Floor", &mut md));
    let runs = ours.or(floor).map_or(0, |t| t.runs);
    let wall = |t: Option<&Timeline>| t.map_or_else(|| "–".to_owned(), |t| ms(t.wall_us));
    let _ = writeln!(
        md,
        "Median of {runs} separate runs each of `vmm run --timeline=json` and `floor \
         --timeline`, each after the same pause (median wall time: ours {}, floor {}). Each \
         cell: the phase's duration (when it ended, since spawn).\n",
        wall(ours),
        wall(floor)
    );
    md.push_str("| phase | ours | floor |\n|---|---:|---:|\n");
    let none: &[Phase] = &[];
    let (our_phases, floor_phases) = (
        ours.map_or(none, |t| &t.phases),
        floor.map_or(none, |t| &t.phases),
    );
    let find = |phases: &[Phase], name: &str| {
        phases
            .iter()
            .find(|p| p.phase == name)
            .map_or_else(|| "–".to_owned(), phase_cell)
    };
    for p in our_phases {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            cell(&p.phase),
            phase_cell(p),
            find(floor_phases, &p.phase)
        );
    }
    for p in floor_phases
        .iter()
        .filter(|p| !our_phases.iter().any(|o| o.phase == p.phase))
    {
        let _ = writeln!(md, "| {} (floor) | – | {} |", cell(&p.phase), phase_cell(p));
    }
    let after = |t: Option<&Timeline>| {
        t.map_or_else(
            || "–".to_owned(),
            |t| format!("{:.1} µs", t.after_last_phase_us),
        )
    };
    let _ = writeln!(
        md,
        "| process exit, reaped (after the last phase) | {} | {} |",
        after(ours),
        after(floor)
    );
    if let Some(t) = ours
        && !t.details.is_empty()
    {
        let details = serde_json::Value::Object(t.details.clone());
        let _ = writeln!(md, "\nOurs also reported: `{details}`");
    }
    md
}

/// The timeline when measured; else says in `md` why `who`'s is missing.
fn done<'a>(t: Option<&'a Part<Timeline>>, who: &str, md: &mut String) -> Option<&'a Timeline> {
    match t {
        Some(Part::Done(t)) => Some(t),
        Some(Part::Missing { unavailable }) => {
            let _ = writeln!(md, "{who}: {}.\n", cell(unavailable));
            None
        }
        None => None,
    }
}

fn phase_cell(p: &Phase) -> String {
    format!("{:.1} µs ({:.0})", p.duration_us, p.since_start_us)
}

fn io_section(io: Option<&Part<crate::io::IoComparison>>) -> String {
    match io {
        None => String::new(),
        Some(Part::Missing { unavailable }) => {
            format!(
                "\n## I/O: sha256sum of a large file\n\nSkipped: {}.\n",
                cell(unavailable)
            )
        }
        Some(Part::Done(result)) => crate::io::markdown(result),
    }
}

fn sha256_section(sha: Option<&Part<Comparison>>) -> String {
    let mut md = String::from("\n## sha256: guest against native\n\n");
    match sha {
        None => return String::new(),
        Some(Part::Missing { unavailable }) => {
            let _ = writeln!(md, "Skipped: {}.", cell(unavailable));
        }
        Some(Part::Done(c)) => {
            let _ = writeln!(
                md,
                "{} MiB per run, {} runs of each side interleaved; digests equal ({}…).\n\n\
                 | | guest | native | guest / native |\n|---|---:|---:|---:|\n\
                 | best run | {:.0} MiB/s | {:.0} MiB/s | {:.2} |\n\
                 | median | {:.0} MiB/s | {:.0} MiB/s | {:.2} |",
                c.mib,
                sha256::RUNS,
                &c.digest[..16.min(c.digest.len())],
                c.guest_mib_s,
                c.native_mib_s,
                c.ratio,
                c.guest_median_mib_s,
                c.native_median_mib_s,
                c.guest_median_mib_s / c.native_median_mib_s
            );
        }
    }
    md
}
