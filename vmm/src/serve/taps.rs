//! Which taps requests may give their guests (`vmm serve --allow-tap PATTERN`), and
//! attaching them.
//!
//! A request's `net` is `vmm run --net`'s text. A client is any process that may connect to
//! the socket, so it must not be able to take an arbitrary host interface: the tap it names
//! must match one of the patterns the server was started with (an interface name in which
//! `*` stands for any run of characters, such as `fltap*`), and it must be a tap by name
//! (`fd=N` would name one of the server's own descriptors). Without `--allow-tap`, requests
//! with `net` are refused. Nor may a client lift its guest's send limit: `tx-rate` may lower
//! the default (`DEFAULT_TX_RATE`), never raise it. Nor choose its guest's MAC address: with
//! `mac=` a client could take the address of the bridge or of another client's guest on the
//! operator's network, so the server gives every guest a random locally administered one and
//! refuses `mac=`. The guest's `ip=` (and `gw=`) stay the client's choice, and the device
//! does not filter by IP address: an operator who gives several clients taps on one bridge
//! must bind addresses to taps there (ebtables/nftables), as for any VM on it. The dispatcher
//! attaches the tap (`Tap::open`: it fails if the
//! interface is missing, not a tap, or attached to someone else) before handing the request
//! to a runner, which gets it in its tap slot (see `slots`).

use crate::devices::net::spec::DEFAULT_TX_RATE;
use crate::net::{NetError, NetSpec, Tap, TapSource};

/// The taps requests may name.
#[derive(Debug, Clone, Default)]
pub(crate) struct TapPolicy {
    patterns: Vec<String>,
}

impl TapPolicy {
    /// The policy of `--allow-tap PATTERN...`; each pattern must be an interface name where
    /// `*` may stand for any run of characters.
    pub(crate) fn new(patterns: &[String]) -> Result<Self, String> {
        for pattern in patterns {
            let as_name = pattern.replace('*', "x");
            crate::devices::net::spec::check_tap_name(&as_name).map_err(|e| {
                format!(
                    "--allow-tap {pattern}: {}",
                    e.to_string().trim_start_matches("--net: ")
                )
            })?;
        }
        Ok(Self {
            patterns: patterns.to_vec(),
        })
    }

    /// Whether the server gives guests network devices at all.
    pub(crate) fn any(&self) -> bool {
        !self.patterns.is_empty()
    }

    /// Parses a request's `net` text and attaches the tap it names, if the policy allows it;
    /// otherwise one line saying why not.
    pub(crate) fn attach(&self, text: &str) -> Result<(NetSpec, Tap), String> {
        if !self.any() {
            return Err(
                "this server gives guests no network device (start it with --allow-tap PATTERN)"
                    .into(),
            );
        }
        let spec = NetSpec::parse(text).map_err(|e| crate::error_chain(&e))?;
        let TapSource::Name(name) = &spec.tap else {
            return Err(
                "--net fd=N names one of the server's descriptors: name a tap (tap=NAME)".into(),
            );
        };
        if !self.patterns.iter().any(|p| matches(p, name)) {
            return Err(format!(
                "--net: tap '{name}' is not one this server may attach (--allow-tap)"
            ));
        }
        if spec.mac.is_some() {
            return Err(
                "--net mac=: this server chooses its guests' MAC addresses (leave mac= out)".into(),
            );
        }
        if spec.tx_rate > DEFAULT_TX_RATE {
            return Err(format!(
                "--net tx-rate={} is above this server's limit of {}",
                crate::size::Size(spec.tx_rate),
                crate::size::Size(DEFAULT_TX_RATE)
            ));
        }
        let tap = Tap::open(name).map_err(|e: NetError| crate::error_chain(&e))?;
        Ok((spec, tap))
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
fn matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_matches_star_stands_for_any_run() {
        assert!(matches("fltap*", "fltap0"));
        assert!(matches("fltap*", "fltap"));
        assert!(matches("tap0", "tap0"));
        assert!(matches("*", "eth0"));
        assert!(matches("a*b*c", "a-b-c"));
        assert!(matches("a*c", "abc"));
        assert!(!matches("tap0", "tap01"));
        assert!(!matches("fltap*", "eth0"));
        assert!(!matches("a*bc", "abc-"));
        assert!(!matches("ab*ba", "aba"), "the parts may not overlap");
    }

    #[test]
    fn test_policy_patterns_must_be_interface_names() {
        assert!(TapPolicy::new(&["fltap*".into(), "tap0".into()]).is_ok());
        for bad in ["", "a/b*", "has space", "a-name-far-too-long*"] {
            assert!(TapPolicy::new(&[bad.into()]).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn test_policy_refuses_a_send_rate_above_the_default() {
        let policy = TapPolicy::new(&["fltap*".into()]).unwrap();
        // Refused before any tap is opened (none named so exists here).
        let err = policy
            .attach("tap=fltap-none,ip=10.0.0.2/24,tx-rate=1G")
            .unwrap_err();
        assert!(err.contains("above this server's limit"), "{err}");
        let err = policy
            .attach("tap=fltap-none,ip=10.0.0.2/24,tx-rate=1M")
            .unwrap_err();
        assert!(
            !err.contains("limit"),
            "a lower rate is the client's to ask: {err}"
        );
    }

    #[test]
    fn test_policy_refuses_a_mac_chosen_by_the_client() {
        let policy = TapPolicy::new(&["fltap*".into()]).unwrap();
        // Refused before any tap is opened (none named so exists here).
        let err = policy
            .attach("tap=fltap-none,ip=10.0.0.2/24,mac=02:00:00:00:00:01")
            .unwrap_err();
        assert!(err.contains("chooses its guests' MAC"), "{err}");
        let err = policy.attach("tap=fltap-none,ip=10.0.0.2/24").unwrap_err();
        assert!(!err.contains("MAC"), "no mac= is not refused for it: {err}");
    }

    #[test]
    fn test_policy_without_patterns_refuses_every_net() {
        let err = TapPolicy::default()
            .attach("tap=tap0,ip=10.0.0.2/24")
            .unwrap_err();
        assert!(err.contains("--allow-tap"), "{err}");
    }

    #[test]
    fn test_policy_refuses_taps_outside_its_patterns_and_fds() {
        let policy = TapPolicy::new(&["fltap*".into()]).unwrap();
        let err = policy.attach("tap=eth0,ip=10.0.0.2/24").unwrap_err();
        assert!(err.contains("not one this server may attach"), "{err}");
        let err = policy.attach("fd=5,ip=10.0.0.2/24").unwrap_err();
        assert!(err.contains("tap=NAME"), "{err}");
        let err = policy.attach("tap=fltap0").unwrap_err();
        assert!(err.contains("ip="), "{err}");
    }

    #[test]
    fn test_policy_allowed_but_missing_tap_fails_to_attach() {
        let policy = TapPolicy::new(&["flnone*".into()]).unwrap();
        let err = policy.attach("tap=flnone9,ip=10.0.0.2/24").unwrap_err();
        assert!(err.contains("no interface named 'flnone9'"), "{err}");
    }
}
