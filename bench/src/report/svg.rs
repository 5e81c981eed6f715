//! Hand-written SVG charts: `boot.svg`, horizontal bars of each peer's median with p10–p90
//! whiskers on a log-scale time axis (ours highlighted); `phases.svg`, our boot's phases as
//! one stacked bar with a legend; `fleet.svg`, launch rates on a linear axis with the target.

use crate::contracts::Phase;
use std::fmt::Write as _;

/// One peer's bar.
pub(crate) struct Bar {
    /// The peer's name.
    pub(crate) label: String,
    /// Bar length.
    pub(crate) median_us: f64,
    /// Whisker start.
    pub(crate) p10_us: f64,
    /// Whisker end.
    pub(crate) p90_us: f64,
    /// Drawn in the accent colour.
    pub(crate) highlight: bool,
}

const WIDTH: f64 = 820.0;
const PLOT_LEFT: f64 = 110.0;
const PLOT_RIGHT: f64 = 730.0;
const ROW: f64 = 30.0;
const TOP: f64 = 50.0;
/// The segment for the time after the VMM's last phase until `wait4` returned.
const REST: &str = "process exit, reaped (after the last phase)";
const ACCENT: &str = "#d9480f";
const MUTED: &str = "#868e96";
const PALETTE: [&str; 16] = [
    "#1c7ed6", "#f08c00", "#2f9e44", "#e03131", "#7048e8", "#0c8599", "#e64980", "#5c940d",
    "#495057", "#f59f00", "#364fc7", "#a61e4d", "#087f5b", "#d9480f", "#862e9c", "#74b816",
];

/// One peer's launch rate.
pub(crate) struct RateBar {
    /// The peer's name.
    pub(crate) label: String,
    /// Instances per second.
    pub(crate) rate: f64,
    /// Drawn in the accent colour.
    pub(crate) highlight: bool,
}

/// A round step for about five ticks from 0 to `max`.
fn linear_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(1e-9);
    let decade = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * decade)
        .find(|s| *s >= raw);
    step.unwrap_or(10.0 * decade)
}

/// The fleet chart: horizontal bars of launch rate per peer on a linear axis from 0 (ours
/// highlighted), with `target` (per second, and its label) as a dashed line.
pub(crate) fn rate_chart(title: &str, bars: &[RateBar], target: Option<(f64, &str)>) -> String {
    let max = bars
        .iter()
        .map(|b| b.rate)
        .chain(target.map(|t| t.0))
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let step = linear_step(max);
    let top = (max / step).ceil() * step;
    let x = |v: f64| PLOT_LEFT + (v / top).clamp(0.0, 1.0) * (PLOT_RIGHT - PLOT_LEFT);
    let bottom = TOP + ROW * bars.len().max(1) as f64;
    let mut svg = open(bottom + 40.0, title);
    let mut tick = 0.0;
    while tick <= top + step / 2.0 {
        let _ = writeln!(
            svg,
            "<line x1=\"{0:.1}\" y1=\"{TOP}\" x2=\"{0:.1}\" y2=\"{bottom}\" stroke=\"#e9ecef\"/>\
             <text x=\"{0:.1}\" y=\"{1:.1}\" text-anchor=\"middle\" fill=\"#495057\">{2}/s</text>",
            x(tick),
            bottom + 16.0,
            trim(tick)
        );
        tick += step;
    }
    for (i, bar) in bars.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let color = if bar.highlight { ACCENT } else { MUTED };
        let weight = if bar.highlight { "bold" } else { "normal" };
        let end = x(bar.rate);
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-weight=\"{weight}\">{}</text>\
             <rect x=\"{PLOT_LEFT}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-weight=\"{weight}\">{:.0}/s</text>",
            PLOT_LEFT - 8.0,
            y + ROW / 2.0 + 4.0,
            escape(&bar.label),
            y + 6.0,
            (end - PLOT_LEFT).max(1.0),
            ROW - 12.0,
            end + 6.0,
            y + ROW / 2.0 + 4.0,
            bar.rate
        );
    }
    if let Some((target, label)) = target {
        let tx = x(target);
        let _ = writeln!(
            svg,
            "<line x1=\"{tx:.1}\" y1=\"{:.1}\" x2=\"{tx:.1}\" y2=\"{bottom}\" stroke=\"{ACCENT}\" \
             stroke-dasharray=\"5 4\"/>\
             <text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{ACCENT}\">{}</text>",
            TOP - 14.0,
            TOP - 18.0,
            escape(label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The log-scale x axis: `[10^lo, 10^hi]` µs over the plot width.
struct LogAxis {
    lo: f64,
    hi: f64,
}

impl LogAxis {
    fn covering(values: impl Iterator<Item = f64>) -> LogAxis {
        let (mut min, mut max) = (f64::INFINITY, 0.0_f64);
        for v in values.filter(|v| *v > 0.0) {
            min = min.min(v);
            max = max.max(v);
        }
        if !min.is_finite() {
            (min, max) = (100.0, 1000.0);
        }
        let lo = min.log10().floor();
        LogAxis {
            lo,
            hi: max.log10().ceil().max(lo + 1.0),
        }
    }

    fn x(&self, us: f64) -> f64 {
        let t = (us.max(1e-3).log10() - self.lo) / (self.hi - self.lo);
        PLOT_LEFT + t.clamp(0.0, 1.0) * (PLOT_RIGHT - PLOT_LEFT)
    }

    /// Tick values (µs): 1, 2, 5 times each power of ten in range.
    fn ticks(&self) -> Vec<(f64, bool)> {
        let mut ticks = Vec::new();
        let mut decade = self.lo;
        while decade <= self.hi {
            for (step, major) in [(1.0, true), (2.0, false), (5.0, false)] {
                let v = step * 10f64.powf(decade);
                if v.log10() <= self.hi + 1e-9 {
                    ticks.push((v, major));
                }
            }
            decade += 1.0;
        }
        ticks
    }
}

/// `us` as a short time label.
fn time_label(us: f64) -> String {
    match us {
        x if x >= 1e6 => format!("{} s", trim(x / 1e6)),
        x if x >= 1e3 => format!("{} ms", trim(x / 1e3)),
        x => format!("{} µs", trim(x)),
    }
}

fn trim(x: f64) -> String {
    if x >= 10.0 || (x - x.round()).abs() < 1e-9 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn open(height: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{PLOT_LEFT}\" y=\"22\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
        escape(title)
    )
}

/// The boot chart.
pub(crate) fn boot_chart(bars: &[Bar]) -> String {
    let axis = LogAxis::covering(bars.iter().flat_map(|b| [b.p10_us, b.p90_us, b.median_us]));
    let bottom = TOP + ROW * bars.len().max(1) as f64;
    let title = "Cold start, fork to exit: median, whiskers p10–p90 (log scale)";
    let mut svg = open(bottom + 40.0, title);
    for (v, major) in axis.ticks() {
        let x = axis.x(v);
        let (stroke, dash) = if major {
            ("#adb5bd", "")
        } else {
            ("#e9ecef", " stroke-dasharray=\"3 3\"")
        };
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{bottom}\" \
             stroke=\"{stroke}\"{dash}/>"
        );
        if major || axis.hi - axis.lo <= 2.0 {
            let _ = writeln!(
                svg,
                "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#495057\">{}</text>",
                bottom + 16.0,
                time_label(v)
            );
        }
    }
    for (i, bar) in bars.iter().enumerate() {
        svg.push_str(&bar_row(&axis, bar, TOP + ROW * i as f64));
    }
    svg.push_str("</svg>\n");
    svg
}

fn bar_row(axis: &LogAxis, bar: &Bar, y: f64) -> String {
    let color = if bar.highlight { ACCENT } else { MUTED };
    let weight = if bar.highlight { "bold" } else { "normal" };
    let (mid, end) = (y + ROW / 2.0, axis.x(bar.median_us));
    let (w0, w1) = (axis.x(bar.p10_us), axis.x(bar.p90_us));
    let mut row = String::new();
    let _ = writeln!(
        row,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-weight=\"{weight}\">{}</text>",
        PLOT_LEFT - 8.0,
        mid + 4.0,
        escape(&bar.label)
    );
    let _ = writeln!(
        row,
        "<rect x=\"{PLOT_LEFT}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"/>",
        y + 6.0,
        (end - PLOT_LEFT).max(1.0),
        ROW - 12.0
    );
    let _ = writeln!(
        row,
        "<path d=\"M{w0:.1} {mid:.1}H{w1:.1}M{w0:.1} {:.1}V{:.1}M{w1:.1} {:.1}V{:.1}\" \
         stroke=\"#212529\" stroke-width=\"1.2\" fill=\"none\"/>",
        mid - 5.0,
        mid + 5.0,
        mid - 5.0,
        mid + 5.0
    );
    let _ = writeln!(
        row,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-weight=\"{weight}\">{}</text>",
        w1.max(end) + 6.0,
        mid + 4.0,
        time_label(bar.median_us)
    );
    row
}

/// The phase chart; says "timeline unavailable" when there are no phases. `rest_us`, the time
/// from the last phase to the VMM's reaping, is drawn as a last grey segment.
pub(crate) fn phases_chart(phases: &[Phase], rest_us: Option<f64>) -> String {
    let mut phases = phases.to_vec();
    if let Some(rest) = rest_us.filter(|r| *r > 0.0 && !phases.is_empty()) {
        phases.push(Phase {
            phase: REST.to_owned(),
            duration_us: rest,
            since_start_us: 0.0,
        });
    }
    let phases = &phases[..];
    let total: f64 = phases.iter().map(|p| p.duration_us.max(0.0)).sum();
    if phases.is_empty() || total <= 0.0 {
        let mut svg = open(60.0, "Our boot, phase by phase");
        svg.push_str(&format!(
            "<text x=\"{PLOT_LEFT}\" y=\"45\" fill=\"{MUTED}\">timeline unavailable</text>\n\
             </svg>\n"
        ));
        return svg;
    }
    let title = format!(
        "Our cold start, phase by phase: medians, summing to {}",
        time_label(total)
    );
    let legend_top = TOP + 70.0;
    let mut svg = open(legend_top + 20.0 * phases.len() as f64 + 10.0, &title);
    let scale = (PLOT_RIGHT - PLOT_LEFT) / total;
    let mut x = PLOT_LEFT;
    for (i, phase) in phases.iter().enumerate() {
        let color = if phase.phase == REST {
            "#ced4da"
        } else {
            PALETTE[i % PALETTE.len()]
        };
        let w = phase.duration_us.max(0.0) * scale;
        let _ = writeln!(
            svg,
            "<rect x=\"{x:.2}\" y=\"{TOP}\" width=\"{w:.2}\" height=\"30\" fill=\"{color}\">\
             <title>{}: {:.1} µs</title></rect>",
            escape(&phase.phase),
            phase.duration_us
        );
        x += w;
        let ly = legend_top + 20.0 * i as f64;
        let _ = writeln!(
            svg,
            "<rect x=\"{PLOT_LEFT}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{} — {:.1} µs ({:.0}%)</text>",
            ly - 10.0,
            PLOT_LEFT + 18.0,
            ly,
            escape(&phase.phase),
            phase.duration_us,
            100.0 * phase.duration_us / total
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{PLOT_LEFT}\" y=\"{:.1}\" fill=\"#495057\">0</text>\
         <text x=\"{PLOT_RIGHT}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#495057\">{}</text>",
        TOP + 46.0,
        TOP + 46.0,
        time_label(total)
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_log_axis_covers_whole_decades() {
        let axis = LogAxis::covering([650.0, 308_000.0].into_iter());
        assert_eq!((axis.lo, axis.hi), (2.0, 6.0));
        assert_eq!(axis.x(100.0), PLOT_LEFT);
        assert_eq!(axis.x(1e6), PLOT_RIGHT);
    }

    #[test]
    fn test_time_label_picks_unit() {
        assert_eq!(time_label(500.0), "500 µs");
        assert_eq!(time_label(2000.0), "2 ms");
        assert_eq!(time_label(1e6), "1 s");
    }

    #[test]
    fn test_linear_step_is_round() {
        assert_eq!(linear_step(700.0), 200.0);
        assert_eq!(linear_step(3000.0), 1000.0);
        assert_eq!(linear_step(50.0), 10.0);
    }

    #[test]
    fn test_rate_chart_draws_each_bar_and_the_target() {
        let bars = [("ours", 900.0, true), ("native", 2500.0, false)].map(|(l, r, h)| RateBar {
            label: l.into(),
            rate: r,
            highlight: h,
        });
        let svg = rate_chart("t", &bars, Some((600.0, "target: 600/s")));
        assert!(svg.contains(">ours<") && svg.contains(">native<"));
        assert!(svg.contains("target: 600/s"));
        assert!(svg.contains(ACCENT));
    }

    #[test]
    fn test_phases_chart_without_phases_says_unavailable() {
        assert!(phases_chart(&[], Some(2000.0)).contains("timeline unavailable"));
    }
}
