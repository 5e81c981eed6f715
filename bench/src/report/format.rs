//! How figures and names appear in the reports: milliseconds, KiB, RSS, table cells, and each
//! peer's short and README labels.

use crate::peers::pool::NAME as NATIVE_POOL;

/// A peer's name as tables and charts show it.
pub(crate) fn short_label(name: &str) -> &str {
    match name {
        "serve-process" => "serve (process)",
        "serve-fresh" => "serve (fresh VMs)",
        NATIVE_POOL => "native pool",
        other => other,
    }
}

/// A peer's name with what it runs, for README.
pub(crate) fn readme_label(name: &str) -> &str {
    match name {
        "ours" => "**ours** (`vmm run hello`)",
        "restore" => "**restore** (`vmm run --from hello.snap`)",
        "floor" => "floor (C: only the KVM calls of a boot)",
        "native" => "native (static glibc hello)",
        "true" => "`/bin/true` (dynamic)",
        "unshare" => "unshare (all namespaces)",
        "crun" => "crun (no wrapper)",
        "docker" => "Docker",
        "qemu" => "QEMU microvm + qboot",
        "serve" => "**serve** (warm request to `vmm serve`, client in-process)",
        "serve-fresh" => {
            "serve (fresh VMs) (the same, `vmm serve --no-reuse`: a new VM per request)"
        }
        "serve-process" => "**serve (process)** (`vmm run --via`)",
        NATIVE_POOL => "native pool (warm request to a pre-started process, client in-process)",
        other => other,
    }
}

/// Microseconds as milliseconds with about three significant digits.
pub(crate) fn ms(us: f64) -> String {
    let ms = us / 1000.0;
    match ms {
        x if x < 10.0 => format!("{x:.2} ms"),
        x if x < 100.0 => format!("{x:.1} ms"),
        x => format!("{x:.0} ms"),
    }
}

/// KiB as KiB, or MiB from 10 MiB on.
pub(crate) fn kib(kib: f64) -> String {
    if kib >= 10240.0 {
        format!("{:.1} MiB", kib / 1024.0)
    } else {
        format!("{kib:.0} KiB")
    }
}

pub(crate) fn peak_rss(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "–".to_owned(),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    )
}

/// Text made safe for one Markdown table cell.
pub(crate) fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ms_keeps_three_digits() {
        assert_eq!(ms(650.0), "0.65 ms");
        assert_eq!(ms(34_700.0), "34.7 ms");
        assert_eq!(ms(308_000.0), "308 ms");
    }

    #[test]
    fn test_cell_escapes_pipes_and_newlines() {
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }

    #[test]
    fn test_kib_switches_to_mib_at_ten() {
        assert_eq!(kib(634.4), "634 KiB");
        assert_eq!(kib(20480.0), "20.0 MiB");
    }
}
