//! `--net tap=NAME[,mac=..],ip=ADDR/PREFIX[,gw=ADDR][,tx-rate=BYTES]`: the text of a network
//! device's settings, parsed into a [`NetSpec`] without touching the host (the tap is opened
//! later, by [`NetSpec::open`]).
//!
//! In a fleet, one spec describes every instance: `{i}` in the tap name becomes the instance's
//! number and the address is incremented by it ([`NetSpec::for_instance`]).

use super::NetError;
use std::net::Ipv4Addr;

/// Where the device's frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// An existing tap interface, by name (`tap=NAME`).
    Name(String),
    /// A tap fd this process inherited, already attached (`fd=N`).
    Fd(i32),
}

/// Default limit on the bytes per second a guest may send (`tx-rate`): 128 MiB/s.
pub const DEFAULT_TX_RATE: u64 = 128 << 20;

/// A network device's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// The tap.
    pub tap: TapSource,
    /// The guest's MAC address (random, locally administered, when `None`).
    pub mac: Option<[u8; 6]>,
    /// The guest's IPv4 address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Bytes per second the guest may send (each frame counts at least 64 bytes); frames
    /// beyond are dropped.
    pub tx_rate: u64,
}

impl NetSpec {
    /// Parses `tap=NAME,ip=10.0.0.2/24[,gw=10.0.0.1][,mac=02:..][,tx-rate=16M]` (or `fd=N`
    /// instead of `tap=NAME`).
    pub fn parse(text: &str) -> Result<Self, NetError> {
        let bad = |why: String| NetError::BadSpec(why);
        let mut tap = None;
        let mut mac = None;
        let mut ip = None;
        let mut gateway = None;
        let mut tx_rate = DEFAULT_TX_RATE;
        for item in text.split(',').filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| bad(format!("'{item}' is not KEY=VALUE")))?;
            match key {
                "tap" => {
                    check_tap_name(value)?;
                    set_once(&mut tap, TapSource::Name(value.to_owned()), "tap or fd")?;
                }
                "fd" => {
                    let fd = value
                        .parse::<i32>()
                        .ok()
                        .filter(|fd| *fd > 2)
                        .ok_or_else(|| bad(format!("fd={value} is not a descriptor above 2")))?;
                    set_once(&mut tap, TapSource::Fd(fd), "tap or fd")?;
                }
                "mac" => set_once(&mut mac, parse_mac(value)?, "mac")?,
                "ip" => set_once(&mut ip, parse_cidr(value)?, "ip")?,
                "gw" => {
                    let gw = value
                        .parse::<Ipv4Addr>()
                        .map_err(|_| bad(format!("gw={value} is not an IPv4 address")))?;
                    set_once(&mut gateway, gw, "gw")?;
                }
                "tx-rate" => {
                    tx_rate = crate::size::parse_size(value)
                        .ok()
                        .filter(|r| *r > 0)
                        .ok_or_else(|| bad(format!("tx-rate={value} is not a size above 0")))?;
                }
                _ => {
                    return Err(bad(format!(
                        "unknown key '{key}' (expected tap, fd, mac, ip, gw, tx-rate)"
                    )));
                }
            }
        }
        let tap = tap.ok_or_else(|| bad("tap=NAME (or fd=N) is missing".into()))?;
        let (ip, prefix_len) = ip.ok_or_else(|| bad("ip=ADDRESS/PREFIX is missing".into()))?;
        Ok(Self {
            tap,
            mac,
            ip,
            prefix_len,
            gateway,
            tx_rate,
        })
    }

    /// The spec of fleet instance `index`: `{i}` in the tap name replaced by `index`, the
    /// address plus `index` (which must stay inside the prefix and not be its broadcast).
    pub fn for_instance(&self, index: usize) -> Result<Self, NetError> {
        let mut spec = self.clone();
        if let TapSource::Name(name) = &self.tap {
            let name = name.replace("{i}", &index.to_string());
            check_tap_name(&name)?;
            spec.tap = TapSource::Name(name);
        } else if index > 0 {
            return Err(NetError::BadSpec(
                "fd=N names one tap; a fleet needs tap=NAME{i}".into(),
            ));
        }
        let host_bits = 32 - u32::from(self.prefix_len);
        let mask = if host_bits == 32 {
            u32::MAX
        } else {
            (1u32 << host_bits) - 1
        };
        let base = u32::from(self.ip);
        let host = u64::from(base & mask) + index as u64;
        if host >= u64::from(mask) {
            return Err(NetError::BadSpec(format!(
                "instance {index}: {}+{index} leaves the /{} network",
                self.ip, self.prefix_len
            )));
        }
        spec.ip = Ipv4Addr::from((base & !mask) | host as u32);
        if spec.mac.is_some() && index > 0 {
            return Err(NetError::BadSpec(
                "mac= gives every instance the same address; leave it out in a fleet".into(),
            ));
        }
        Ok(spec)
    }
}

impl std::fmt::Display for NetSpec {
    /// The `--net` text that [`NetSpec::parse`] reads back into this spec.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tap {
            TapSource::Name(name) => write!(f, "tap={name}")?,
            TapSource::Fd(fd) => write!(f, "fd={fd}")?,
        }
        write!(f, ",ip={}/{}", self.ip, self.prefix_len)?;
        if let Some(gateway) = self.gateway {
            write!(f, ",gw={gateway}")?;
        }
        if let Some(m) = self.mac {
            write!(
                f,
                ",mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            )?;
        }
        write!(f, ",tx-rate={}", self.tx_rate)
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, key: &str) -> Result<(), NetError> {
    if slot.is_some() {
        return Err(NetError::BadSpec(format!("{key} is given twice")));
    }
    *slot = Some(value);
    Ok(())
}

/// A Linux interface name: 1 to 15 bytes, no `/`, whitespace or NUL.
pub(crate) fn check_tap_name(name: &str) -> Result<(), NetError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
    if ok {
        Ok(())
    } else {
        Err(NetError::BadSpec(format!(
            "'{name}' is not an interface name (1 to 15 characters, no '/', ':' or spaces)"
        )))
    }
}

fn parse_mac(text: &str) -> Result<[u8; 6], NetError> {
    let bad = || {
        NetError::BadSpec(format!(
            "mac={text} is not a MAC address like 02:00:00:00:00:01"
        ))
    };
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(NetError::BadSpec(format!(
            "mac={text} is not a unicast address"
        )));
    }
    Ok(mac)
}

fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), NetError> {
    let bad = || NetError::BadSpec(format!("ip={text} is not ADDRESS/PREFIX like 10.0.0.2/24"));
    let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if !(1..=32).contains(&prefix) || addr.is_unspecified() || addr.is_broadcast() {
        return Err(bad());
    }
    if addr.is_multicast() {
        return Err(NetError::BadSpec(format!(
            "ip={text} is a multicast address"
        )));
    }
    Ok((addr, prefix))
}

/// A random MAC address: unicast, locally administered (`x2:..`).
pub(crate) fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most `mac.len()` bytes into our buffer.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        // No entropy at all: still unique enough per process on one bridge.
        let pid = std::process::id().to_le_bytes();
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            .to_le_bytes();
        mac = [0, pid[0], pid[1], t[0], t[1], t[2]];
    }
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_full_spec_reads_every_key() {
        let spec =
            NetSpec::parse("tap=ftap0,mac=02:00:00:00:00:07,ip=10.0.0.2/24,gw=10.0.0.1,tx-rate=1M")
                .unwrap();
        assert_eq!(spec.tap, TapSource::Name("ftap0".into()));
        assert_eq!(spec.mac, Some([2, 0, 0, 0, 0, 7]));
        assert_eq!(spec.ip, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(spec.prefix_len, 24);
        assert_eq!(spec.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(spec.tx_rate, 1 << 20);
    }

    #[test]
    fn test_parse_minimal_spec_uses_defaults() {
        let spec = NetSpec::parse("fd=7,ip=192.168.5.3/16").unwrap();
        assert_eq!(spec.tap, TapSource::Fd(7));
        assert_eq!((spec.mac, spec.gateway), (None, None));
        assert_eq!(spec.tx_rate, DEFAULT_TX_RATE);
    }

    #[test]
    fn test_parse_bad_specs_are_refused() {
        for text in [
            "",
            "ip=10.0.0.2/24",
            "tap=t0",
            "tap=t0,ip=10.0.0.2",
            "tap=t0,ip=10.0.0.2/33",
            "tap=t0,ip=10.0.0.2/0",
            "tap=t0,ip=224.0.0.1/24",
            "tap=t0,ip=0.0.0.0/24",
            "tap=t0,ip=10.0.0.2/24,gw=x",
            "tap=t0,ip=10.0.0.2/24,mac=01:00:00:00:00:01",
            "tap=t0,ip=10.0.0.2/24,mac=02:00:00:00:00",
            "tap=t0,ip=10.0.0.2/24,mac=02:00:00:00:00:01:02",
            "tap=t0,ip=10.0.0.2/24,tx-rate=0",
            "tap=t0,ip=10.0.0.2/24,color=blue",
            "tap=t0,tap=t1,ip=10.0.0.2/24",
            "tap=../x,ip=10.0.0.2/24",
            "tap=a-name-far-too-long,ip=10.0.0.2/24",
            "fd=1,ip=10.0.0.2/24",
            "fd=-5,ip=10.0.0.2/24",
            "tap",
        ] {
            assert!(NetSpec::parse(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn test_for_instance_numbers_taps_and_addresses() {
        let spec = NetSpec::parse("tap=fl{i},ip=10.1.0.10/16,gw=10.1.0.1").unwrap();
        let third = spec.for_instance(300).unwrap();
        assert_eq!(third.tap, TapSource::Name("fl300".into()));
        assert_eq!(third.ip, Ipv4Addr::new(10, 1, 1, 54));
        assert_eq!(third.gateway, spec.gateway);
    }

    #[test]
    fn test_for_instance_outside_the_network_is_refused() {
        let spec = NetSpec::parse("tap=fl{i},ip=10.1.0.250/24").unwrap();
        assert!(spec.for_instance(4).is_ok());
        assert!(spec.for_instance(5).is_err(), "10.1.0.255 is the broadcast");
        let fixed_mac = NetSpec::parse("tap=f{i},ip=10.1.0.2/24,mac=02:00:00:00:00:01").unwrap();
        assert!(fixed_mac.for_instance(1).is_err());
    }

    #[test]
    fn test_display_parses_back_to_the_same_spec() {
        for text in [
            "tap=ftap0,mac=02:00:00:00:00:07,ip=10.0.0.2/24,gw=10.0.0.1,tx-rate=1M",
            "fd=5,ip=10.9.8.7/8",
        ] {
            let spec = NetSpec::parse(text).unwrap();
            assert_eq!(NetSpec::parse(&spec.to_string()).unwrap(), spec);
        }
    }

    #[test]
    fn test_random_mac_is_local_unicast() {
        for _ in 0..16 {
            let mac = random_mac();
            assert_eq!(mac[0] & 0x03, 0x02, "{mac:02x?}");
        }
    }
}
